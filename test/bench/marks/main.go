// Command marks is `make bench-marks`: what names for life costs at scale. It raises the
// high-water marks of N fingerprints (default 100,000) into one marks namespace and leaves another
// empty, then runs rows of creates through an rrguard replica pointed at each, interleaved round
// by round, and reports creates per second, CPU milliseconds per create of kube-apiserver, etcd
// and this process (rrguard and the creators), rrguard's start-up time and heap, and the marks'
// object count and bytes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

func main() {
	fps := flag.Int("fingerprints", 100000, "fingerprints whose marks are raised")
	few := flag.Int("baseline-fingerprints", 0, "fingerprints whose marks are raised in the baseline's marks namespace (0: none; 4096 puts one in every shard)")
	creates := flag.Int("creates", 3000, "creates per row")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	workers := flag.Int("workers", 32, "concurrent creators")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err := run(*fps, *few, *creates, *rounds, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "bench-marks:", err)
		os.Exit(1)
	}
}

type row struct {
	perSec                float64
	apiMS, etcdMS, selfMS float64 // CPU ms per create
	startup               time.Duration
	heapMB                float64
}

func run(nfp, nfew, creates, rounds, workers int) error {
	ctx := context.Background()
	env, err := testenv.Start(testenv.Options{Webhooks: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	c := env.Client
	for _, ns := range []string{"marks-empty", "marks-full", "bench"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	// Raise the marks of nfp fingerprints of namespace "bench", one write per shard.
	start := time.Now()
	if err := raise(ctx, marks.Store{Namespace: "marks-full", Reader: c, Writer: c}, nfp, "mark/"); err != nil {
		return err
	}
	shards := map[string]bool{}
	for i := range nfp {
		shards[marks.ShardName(testenv.Fingerprint("mark/"+strconv.Itoa(i)))] = true
	}
	if err := raise(ctx, marks.Store{Namespace: "marks-empty", Reader: c, Writer: c}, nfew, "few/"); err != nil {
		return err
	}
	fmt.Printf("raised %d marks in %d shards in %s\n", nfp, len(shards), time.Since(start).Round(time.Millisecond))
	var list corev1.ConfigMapList
	if err := c.List(ctx, &list, client.InNamespace("marks-full")); err != nil {
		return err
	}
	var protoBytes, entries, maxShard int
	for i := range list.Items {
		protoBytes += list.Items[i].Size()
		entries += len(list.Items[i].Data)
		maxShard = max(maxShard, list.Items[i].Size())
	}
	fmt.Printf("marks: %d ConfigMaps, %d entries, %d bytes as stored (protobuf), %d bytes per entry, largest shard %d bytes\n",
		len(list.Items), entries, protoBytes, protoBytes/max(entries, 1), maxShard)

	pids, err := testenv.ControlPlane()
	if err != nil {
		return err
	}
	// Start-up and heap of a fresh replica with and without the marks, before any RR exists.
	for _, variant := range []string{"marks-empty", "marks-full", "marks-empty", "marks-full"} {
		heapBefore := heapMiB()
		stop, startup, heap, err := replica(ctx, env, variant)
		if err != nil {
			return err
		}
		_ = stop()
		fmt.Printf("fresh replica, no RRs, %-11s: ready in %s, heap in use %.1f MiB (process: %.1f MiB before it started)\n",
			variant, startup.Round(time.Millisecond), heap, heapBefore)
	}
	results := map[string][]row{}
	seq := 0
	for r := range rounds {
		for _, variant := range []string{"marks-empty", "marks-full"} {
			stop, startup, heap, err := replica(ctx, env, variant)
			if err != nil {
				return err
			}
			cpu0 := testenv.CPUMillis(pids)
			w0 := time.Now()
			if err := createRow(ctx, c, creates, workers, &seq); err != nil {
				_ = stop()
				return err
			}
			wall := time.Since(w0)
			cpu1 := testenv.CPUMillis(pids)
			_ = stop()
			per := func(k string) float64 { return float64(cpu1[k]-cpu0[k]) / float64(creates) }
			rw := row{perSec: float64(creates) / wall.Seconds(), apiMS: per("kube-apiserver"), etcdMS: per("etcd"), selfMS: per("self"),
				startup: startup, heapMB: heap}
			results[variant] = append(results[variant], rw)
			fmt.Printf("round %d %-11s %7.0f creates/s  CPU ms/create: apiserver %.2f etcd %.2f rrguard+creators %.2f  start-up %s  heap %.0f MiB\n",
				r+1, variant, rw.perSec, rw.apiMS, rw.etcdMS, rw.selfMS, startup.Round(time.Millisecond), rw.heapMB)
		}
	}
	var ratios []float64
	for i := range results["marks-full"] {
		ratios = append(ratios, results["marks-full"][i].perSec/results["marks-empty"][i].perSec)
	}
	fmt.Printf("\n| marks | creates/s median (range) | apiserver CPU ms/create | etcd | rrguard+creators | start-up | heap MiB |\n|---|---|---|---|---|---|---|\n")
	for _, v := range []string{"marks-empty", "marks-full"} {
		rs := results[v]
		f := func(get func(row) float64) string {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = get(r)
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.2f (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		label := fmt.Sprint(nfew)
		if v == "marks-full" {
			label = fmt.Sprintf("%d", nfp)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s s | %s |\n", label, f(func(r row) float64 { return r.perSec }),
			f(func(r row) float64 { return r.apiMS }), f(func(r row) float64 { return r.etcdMS }), f(func(r row) float64 { return r.selfMS }),
			f(func(r row) float64 { return r.startup.Seconds() }), f(func(r row) float64 { return r.heapMB }))
	}
	slices.Sort(ratios)
	fmt.Printf("\ncreates/s with %d marks / with %d, paired per round: median %.2f (range %.2f-%.2f)\n", nfp, nfew, ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1])
	return nil
}

// replica starts an rrguard replica reading the marks of marksNS, and reports how long it took to
// be ready and the process's heap in use after it (MiB, after a GC).
func replica(ctx context.Context, env *testenv.Env, marksNS string) (stop func() error, startup time.Duration, heap float64, err error) {
	t0 := time.Now()
	stop, err = env.ServeRRGuard(ctx, func(o *serve.Options) { o.MarksNamespace = marksNS })
	if err != nil {
		return nil, 0, 0, err
	}
	return stop, time.Since(t0), heapMiB(), nil
}

func heapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20)
}

// raise raises the marks of n fingerprints (derived from prefix) of namespace "bench", one write
// per shard.
func raise(ctx context.Context, store marks.Store, n int, prefix string) error {
	shards := map[string]map[string]int64{}
	for i := range n {
		fp := testenv.Fingerprint(prefix + strconv.Itoa(i))
		s := marks.ShardName(fp)
		if shards[s] == nil {
			shards[s] = map[string]int64{}
		}
		shards[s][fp] = int64(1 + i%50)
	}
	for s, want := range shards {
		if err := store.Raise(ctx, "bench", s, want); err != nil {
			return err
		}
	}
	return nil
}

// createRow sends n creates of fresh fingerprints from workers goroutines.
func createRow(ctx context.Context, c client.Client, n, workers int, seq *int) error {
	base := *seq
	*seq += n
	var firstErr error
	var mu sync.Mutex
	testenv.Parallel(n, workers, func(i int) {
		if err := c.Create(ctx, testenv.NewRR("bench", testenv.Fingerprint("create/"+strconv.Itoa(base+i)))); err != nil {
			mu.Lock()
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}
	})
	return firstErr
}
