// Command reads is `make bench-reads`: what a consistent read of one fingerprint's RRs costs when
// the RR CRD declares spec.signalFingerprint selectable (a List by field selector, filtered by the
// API server) and when it does not (rrguard then scans the namespace in pages of 500 and filters
// itself), with the namespace holding N RRs of Kubernaut's size (default 10,000). Rows of reads,
// interleaved round by round, report reads per second, latency and CPU milliseconds per read of
// kube-apiserver, etcd and this process (the reader, which decodes what it is sent).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/test/testenv"
)

func main() {
	n := flag.Int("rrs", 10000, "RRs of Kubernaut's size in the namespace")
	reads := flag.Int("reads", 20, "reads per row at least; a row also lasts at least -row-time")
	rowTime := flag.Duration("row-time", 10*time.Second, "the shortest row")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err := run(*n, *reads, *rounds, *rowTime); err != nil {
		fmt.Fprintln(os.Stderr, "bench-reads:", err)
		os.Exit(1)
	}
}

type row struct {
	perSec, p50, p99      float64 // reads/s, ms
	apiMS, etcdMS, selfMS float64
}

func run(n, minReads, rounds int, rowTime time.Duration) error {
	ctx := context.Background()
	env, err := testenv.Start(testenv.Options{})
	if err != nil {
		return err
	}
	defer env.Stop()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-reads-"}}
	if err := env.Client.Create(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := testenv.Fill(ctx, env.Client, ns.Name, 0, n, true); err != nil {
		return err
	}
	fmt.Printf("%d RRs of Kubernaut's size in %s in %s\n", n, ns.Name, time.Since(start).Round(time.Second))
	pids, err := testenv.ControlPlane()
	if err != nil {
		return err
	}
	modes := []string{"selector", "scan"}
	results := map[string][]row{}
	for r := range rounds {
		for i := range modes {
			mode := modes[(i+r)%len(modes)]
			l, err := testenv.RRReader(env.Config, mode != "scan")
			if err != nil {
				return err
			}
			var lat []float64
			cpu0 := testenv.CPUMillis(pids)
			w0 := time.Now()
			for k := 0; k < minReads || time.Since(w0) < rowTime; k++ {
				fp := testenv.Fingerprint(ns.Name + "/fill/" + strconv.Itoa((k*7919)%n))
				t0 := time.Now()
				got, err := l.ReadKey(ctx, ns.Name, fp, fp)
				if err != nil {
					return err
				}
				if len(got) != 1 {
					return fmt.Errorf("%s read of a fingerprint found %d RRs, want 1", mode, len(got))
				}
				lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
			}
			wall := time.Since(w0)
			cpu1 := testenv.CPUMillis(pids)
			reads := len(lat)
			slices.Sort(lat)
			per := func(k string) float64 { return float64(cpu1[k]-cpu0[k]) / float64(reads) }
			rw := row{perSec: float64(reads) / wall.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
				apiMS: per("kube-apiserver"), etcdMS: per("etcd"), selfMS: per("self")}
			results[mode] = append(results[mode], rw)
			fmt.Printf("round %d %-8s %7.1f reads/s p50 %7.1f ms p99 %7.1f ms  CPU ms/read: apiserver %.1f etcd %.1f reader %.1f\n",
				r+1, mode, rw.perSec, rw.p50, rw.p99, rw.apiMS, rw.etcdMS, rw.selfMS)
		}
	}
	fmt.Printf("\n%d RRs, rows of at least %d reads and %s, %d rounds; median (range); ratio paired per round against selector\n\n", n, minReads, rowTime, rounds)
	fmt.Println("| read | reads/s | p50 ms | p99 ms | apiserver CPU ms/read | etcd | reader | apiserver CPU / selector |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, m := range modes {
		rs := results[m]
		f := func(get func(row) float64) string {
			xs := make([]float64, len(rs))
			for i := range rs {
				xs[i] = get(rs[i])
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.1f (%.1f-%.1f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		xs := make([]float64, len(rs))
		for i := range rs {
			xs[i] = rs[i].apiMS / results["selector"][i].apiMS
		}
		slices.Sort(xs)
		ratio := fmt.Sprintf("%.2fx (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", m, f(func(r row) float64 { return r.perSec }),
			f(func(r row) float64 { return r.p50 }), f(func(r row) float64 { return r.p99 }),
			f(func(r row) float64 { return r.apiMS }), f(func(r row) float64 { return r.etcdMS }), f(func(r row) float64 { return r.selfMS }), ratio)
	}
	return nil
}
