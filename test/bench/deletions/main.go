// Command deletions is `make bench-deletions`: what rrguard costs an RR's deletion, against no
// rrguard at all. Rows of n finished RRs are deleted at once by 16 deleters (a burst far above
// Kubernaut's retention, which deletes each RR 24 h after it finished), in four modes, interleaved
// round by round:
//
//   - none: RRs that never met rrguard (a namespace it does not judge): the baseline;
//   - released-up: RRs rrguard admitted and released once past the hold, deleted with rrguard up;
//   - released-down: the same, deleted with rrguard stopped;
//   - held: RRs that still carry rrguard's finalizer when deleted (RRs in their hold, or every RR
//     under the release before the early release), which rrguard releases at the deletion.
//
// It reports the time from each DELETE sent to the watch's Deleted event (p50, p99), and CPU
// milliseconds per deletion of kube-apiserver, etcd and this process (rrguard and the deleters).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

func main() {
	n := flag.Int("rrs", 2000, "RRs deleted per row")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	deleters := flag.Int("deleters", 16, "concurrent deleters")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err := run(*n, *rounds, *deleters); err != nil {
		fmt.Fprintln(os.Stderr, "bench-deletions:", err)
		os.Exit(1)
	}
}

var modes = []string{"none", "released-up", "released-down", "held"}

type row struct {
	p50, p99              time.Duration
	perSec                float64
	apiMS, etcdMS, selfMS float64
}

func run(n, rounds, deleters int) error {
	ctx := context.Background()
	env, err := testenv.Start(testenv.Options{Webhooks: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		return err
	}
	judged, err := env.Namespace(ctx, "deletions")
	if err != nil {
		return err
	}
	plain, err := env.UnjudgedNamespace(ctx, "deletions-plain", judged)
	if err != nil {
		return err
	}
	_ = stop()
	pids, err := testenv.ControlPlane()
	if err != nil {
		return err
	}
	results := map[string][]row{}
	seq := 0
	for r := range rounds {
		for i := range modes {
			mode := modes[(i+r)%len(modes)]
			rw, err := deletionRow(ctx, env, pids, mode, judged, plain, n, deleters, &seq)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, mode, err)
			}
			results[mode] = append(results[mode], rw)
			fmt.Printf("round %d %-13s %6.0f deletions/s  p50 %8s p99 %8s  CPU ms/deletion: apiserver %.2f etcd %.2f rrguard+deleters %.2f\n",
				r+1, mode, rw.perSec, rw.p50, rw.p99, rw.apiMS, rw.etcdMS, rw.selfMS)
		}
	}
	fmt.Printf("\n%d RRs per row, %d deleters, %d rounds; median (range) over rounds; ratios paired per round against none\n\n", n, deleters, rounds)
	fmt.Println("| mode | deletions/s | p50 ms | p99 ms | apiserver CPU ms/deletion | etcd | rrguard + deleters | apiserver CPU / none |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, m := range modes {
		rs := results[m]
		f := func(get func(row) float64) string {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = get(r)
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.2f (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		ratio := func(get func(row) float64) string {
			xs := make([]float64, len(rs))
			for i := range rs {
				xs[i] = get(rs[i]) / get(results["none"][i])
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.2fx (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", m,
			f(func(r row) float64 { return r.perSec }), f(func(r row) float64 { return ms(r.p50) }), f(func(r row) float64 { return ms(r.p99) }),
			f(func(r row) float64 { return r.apiMS }), f(func(r row) float64 { return r.etcdMS }), f(func(r row) float64 { return r.selfMS }),
			ratio(func(r row) float64 { return r.apiMS }))
	}
	return nil
}

// deletionRow prepares n finished RRs as mode says, then deletes them all and measures.
func deletionRow(ctx context.Context, env *testenv.Env, pids map[string]int, mode, judged, plain string, n, deleters int, seq *int) (row, error) {
	ns := judged
	var stop func() error
	switch mode {
	case "none":
		ns = plain
	case "released-up", "released-down":
		var err error
		if stop, err = env.ServeRRGuard(ctx, func(o *serve.Options) { o.ReleaseEvery = 100 * time.Millisecond }); err != nil {
			return row{}, err
		}
	case "held":
		// The test default: a 1 ms hold but no sweep after the first, so RRs keep the finalizer
		// until they are deleted.
		var err error
		if stop, err = env.ServeRRGuard(ctx); err != nil {
			return row{}, err
		}
	}
	defer func() {
		if stop != nil {
			_ = stop()
		}
	}()
	rrs, err := prepare(ctx, env.Client, ns, n, seq)
	if err != nil {
		return row{}, err
	}
	wantFinalizer := mode == "held"
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var list v1alpha1.RemediationRequestList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for i := range list.Items {
			if slices.Contains(list.Items[i].Finalizers, marks.Finalizer) != wantFinalizer {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return row{}, fmt.Errorf("RRs not as the mode needs them (finalizer %v): %w", wantFinalizer, err)
	}
	if mode == "released-down" {
		if err := stop(); err != nil {
			return row{}, err
		}
		stop = nil
	}
	return deleteAll(ctx, env, pids, ns, rrs, deleters)
}

// prepare creates n RRs of fresh fingerprints in ns and marks them finished.
func prepare(ctx context.Context, c client.Client, ns string, n int, seq *int) ([]*v1alpha1.RemediationRequest, error) {
	base := *seq
	*seq += n
	rrs := make([]*v1alpha1.RemediationRequest, n)
	var firstErr error
	var mu sync.Mutex
	testenv.Parallel(n, 32, func(i int) {
		rr := testenv.NewRR(ns, testenv.Fingerprint("delete/"+strconv.Itoa(base+i)))
		err := c.Create(ctx, rr)
		if err == nil {
			patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"overallPhase":"Completed"}}`))
			err = c.Status().Patch(ctx, rr, patch)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = err
		}
		rrs[i] = rr
	})
	return rrs, firstErr
}

// deleteAll deletes rrs from deleters goroutines and reports the time from each DELETE sent to
// the API server's Deleted event, and the CPU the burst cost.
func deleteAll(ctx context.Context, env *testenv.Env, pids map[string]int, ns string, rrs []*v1alpha1.RemediationRequest, deleters int) (row, error) {
	c := env.Client
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: c.Scheme()})
	if err != nil {
		return row{}, err
	}
	var since v1alpha1.RemediationRequestList
	if err := c.List(ctx, &since, client.InNamespace(ns), client.Limit(1)); err != nil {
		return row{}, err
	}
	// From now on only: no initial events for the RRs already there.
	w, err := wc.Watch(ctx, &v1alpha1.RemediationRequestList{}, client.InNamespace(ns),
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: since.ResourceVersion}})
	if err != nil {
		return row{}, err
	}
	defer w.Stop()
	var mu sync.Mutex
	asked := map[string]time.Time{}
	var lat []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			rr, ok := ev.Object.(*v1alpha1.RemediationRequest)
			if !ok || ev.Type != watch.Deleted {
				continue
			}
			mu.Lock()
			if t, ok := asked[rr.Name]; ok {
				lat = append(lat, time.Since(t))
			}
			finished := len(lat) == len(rrs)
			mu.Unlock()
			if finished {
				return
			}
		}
	}()
	cpu0 := testenv.CPUMillis(pids)
	w0 := time.Now()
	testenv.Parallel(len(rrs), deleters, func(i int) {
		mu.Lock()
		asked[rrs[i].Name] = time.Now()
		mu.Unlock()
		_ = c.Delete(ctx, rrs[i])
	})
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
	}
	wall := time.Since(w0)
	cpu1 := testenv.CPUMillis(pids)
	mu.Lock()
	defer mu.Unlock()
	if len(lat) < len(rrs) {
		return row{}, fmt.Errorf("only %d of %d deletions completed", len(lat), len(rrs))
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Millisecond)
	}
	per := func(k string) float64 { return float64(cpu1[k]-cpu0[k]) / float64(len(rrs)) }
	return row{p50: q(0.5), p99: q(0.99), perSec: float64(len(rrs)) / wall.Seconds(),
		apiMS: per("kube-apiserver"), etcdMS: per("etcd"), selfMS: per("self")}, nil
}
