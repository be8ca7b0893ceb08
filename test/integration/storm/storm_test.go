// Package storm proves that every signal is accounted for: signals sent through package creator
// end as exactly one RR per fingerprint whose occurrenceCount equals the signals sent for it, also
// while rrguard replicas die and come back, the API server restarts, or rrguard is too slow.
package storm

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/kubernaut/storm"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

func fingerprints(ns string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i))
	}
	return out
}

// exact asserts one RR per fingerprint, none lost, and occurrenceCount equal to the signals sent
// for each fingerprint, up to overcount (ambiguous writes) in total.
func exact(ctx context.Context, t *testing.T, ns string, s storm.Summary, overcount int) {
	t.Helper()
	t.Log(s)
	k, err := storm.Check(ctx, env.Client, ns, s.PerFP)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(k)
	if s.Lost() != 0 || len(s.Errors) != 0 {
		t.Fatalf("%d signals lost, errors %v", s.Lost(), s.Errors)
	}
	if k.Duplicates != 0 || len(k.MissingFP) != 0 || k.RRs != len(s.PerFP) {
		t.Fatalf("%d RRs for %d fingerprints: %d duplicates, %d fingerprints without RR", k.RRs, len(s.PerFP), k.Duplicates, len(k.MissingFP))
	}
	over := 0
	for fp, sent := range s.PerFP {
		got := k.CountPerFP[fp]
		if got < sent {
			t.Fatalf("fingerprint %s: occurrenceCount %d < %d signals sent: signals lost", fp[:8], got, sent)
		}
		over += got - sent
	}
	if over > overcount {
		t.Fatalf("occurrenceCount over-counts by %d, more than the %d ambiguous outcomes", over, overcount)
	}
}

func TestThousandSignalsExactCounts(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "storm", 5*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	s := storm.Run(ctx, env.Client, storm.Options{Namespace: ns, Fingerprints: fingerprints(ns, 50), Signals: 1000, Workers: 64})
	exact(ctx, t, ns, s, 0)
	if s.Ambiguous != 0 {
		t.Fatalf("%d ambiguous outcomes with no fault injected", s.Ambiguous)
	}
}

// replica runs one rrguard replica on a port of its own, returned; stop kills it.
func replica(ctx context.Context, t *testing.T) (addr string, stop func() error) {
	t.Helper()
	r, stop, err := env.ServeReplica(ctx, env.Config, testenv.Aside)
	if err != nil {
		t.Fatal(err)
	}
	return r.WebhookAddr(), stop
}

// service is two rrguard replicas behind a round-robin proxy on the address the webhook
// configurations name, standing in for a Service.
type service struct {
	proxy *testenv.Proxy
	addrs []string
	stops []func() error
}

// proxied runs a service for the length of a test.
func proxied(ctx context.Context, t *testing.T) *service {
	t.Helper()
	o := env.ServeOptions()
	s := &service{}
	for range 2 {
		addr, stop := replica(ctx, t)
		s.addrs, s.stops = append(s.addrs, addr), append(s.stops, stop)
	}
	p, err := testenv.NewProxy(net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), s.addrs...)
	if err != nil {
		t.Fatal(err)
	}
	s.proxy = p
	t.Cleanup(func() {
		_ = s.proxy.Close()
		for _, stop := range s.stops {
			_ = stop()
		}
	})
	return s
}

// at returns an OnLanded hook that closes each channel once the storm has landed that many
// signals, so that a fault is injected at a point of the storm, whatever the machine's speed.
func at(points ...int) (func(int), []chan struct{}) {
	chans := make([]chan struct{}, len(points))
	for i := range chans {
		chans[i] = make(chan struct{})
	}
	return func(done int) {
		for i, p := range points {
			if done == p {
				close(chans[i])
			}
		}
	}, chans
}

// Two replicas behind a Service; one is killed after 100 of 1,000 signals and started again after
// 300. Two storms run through it at once, in namespaces of their own: 50 fingerprints, and the
// alert-storm shape (1,000 repeats of one fingerprint from 64 goroutines of one process).
func TestReplicaKilledMidStorm(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "storm", 5*time.Minute)
	_, hotNS := env.TestNamespace(t, "storm-hot", 5*time.Minute)
	svc := proxied(ctx, t)
	onLanded, points := at(100, 300)
	var s, hot storm.Summary
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s = storm.Run(ctx, env.Client, storm.Options{Namespace: ns, Fingerprints: fingerprints(ns, 50), Signals: 1000, Workers: 64, OnLanded: onLanded})
	}()
	go func() {
		defer wg.Done()
		hot = storm.Run(ctx, env.Client, storm.Options{Namespace: hotNS, Fingerprints: fingerprints(hotNS, 1), Signals: 1000, Workers: 64})
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	<-points[0]
	if err := svc.stops[0](); err != nil {
		t.Fatal(err)
	}
	select {
	case <-points[1]:
	case <-done:
	}
	// The replacement serves where the kernel puts it, as a new pod would; the Service (the proxy)
	// sends to it from now on.
	svc.addrs[0], svc.stops[0] = replica(ctx, t)
	svc.proxy.SetBackends(svc.addrs...)
	<-done
	exact(ctx, t, ns, s, s.Ambiguous)
	exact(ctx, t, hotNS, hot, hot.Ambiguous)
	for _, x := range []storm.Summary{s, hot} {
		if x.Attempts <= x.Sent {
			t.Fatalf("no create needed a retry (%d creates for %d signals): the kill did not hit the storm", x.Attempts, x.Sent)
		}
	}
	if hot.Created != 1 {
		t.Fatalf("the one-fingerprint storm created %d RRs", hot.Created)
	}
}

// rrguard slower than the webhook timeout (5 s): a create fails fast with a clear error and
// nothing is stored; the helper's retries then land each signal exactly once.
func TestSlowerThanTimeout(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "storm", 5*time.Minute)
	p := proxied(ctx, t).proxy
	p.SetDelay(7 * time.Second)
	fp := testenv.Fingerprint(ns + "/slow")
	start := time.Now()
	err := env.Client.Create(ctx, testenv.NewRR(ns, fp))
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("create through a slow rrguard: %v", err)
	}
	t.Logf("create failed after %s: %v", took.Round(time.Millisecond), err)
	var none v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &none, client.InNamespace(ns)); err != nil || len(none.Items) != 0 {
		t.Fatalf("after the timed-out create: %d RRs stored, %v", len(none.Items), err)
	}
	if !creator.Transient(err) {
		t.Fatalf("a webhook timeout must be retryable: %v", err)
	}

	// Signals sent while rrguard is slow; it recovers once ten of the storm's requests have been
	// held for the whole delay, each longer than the webhook timeout (counted from here: the
	// create above is still held).
	base := p.HeldOut() + 1
	go func() {
		_ = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, false, func(context.Context) (bool, error) {
			return p.HeldOut() >= base+10, nil
		})
		p.SetDelay(0)
	}()
	s := storm.Run(ctx, env.Client, storm.Options{Namespace: ns, Fingerprints: fingerprints(ns, 5), Signals: 20, Workers: 10,
		Creator: creator.Options{MaxAttempts: 20, MaxBackoff: time.Second}})
	exact(ctx, t, ns, s, s.Ambiguous)
	if s.Attempts <= s.Sent {
		t.Fatalf("no create was retried (%d creates for %d signals): rrguard was never slow for the storm", s.Attempts, s.Sent)
	}
}

// The API server restarted mid-storm, etcd and its data kept: every signal still lands once.
func TestAPIServerRestartMidStorm(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "storm", 5*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	onLanded, points := at(100)
	var s storm.Summary
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s = storm.Run(ctx, env.Client, storm.Options{Namespace: ns, Fingerprints: fingerprints(ns, 50), Signals: 1000, Workers: 64,
			// Like a Gateway, keep retrying for as long as a graceful restart under load takes: the
			// API server drains in-flight requests for up to a minute before it stops.
			Creator: creator.Options{MaxAttempts: 400, MaxBackoff: time.Second}, OnLanded: onLanded})
	}()
	<-points[0]
	start := time.Now()
	if err := env.RestartAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %s", time.Since(start).Round(time.Millisecond))
	wg.Wait()
	exact(ctx, t, ns, s, s.Ambiguous)
	if s.Attempts <= s.Sent {
		t.Fatalf("no create needed a retry (%d creates for %d signals): the restart did not hit the storm", s.Attempts, s.Sent)
	}
}

// stormDuration is how long the completion storm runs: RRGUARD_STORM_DURATION (`make storm` sets
// a minute), else 10 s in `make test`.
func stormDuration(t *testing.T) time.Duration {
	if v := os.Getenv("RRGUARD_STORM_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("RRGUARD_STORM_DURATION: %v", err)
		}
		return d
	}
	return 10 * time.Second
}

// Numbering above 1, under concurrency, across deletions: 64 creators fire at 50 fingerprints
// while another goroutine completes every RR in flight as soon as it sees it and deletes every
// finished one, as Kubernaut's orchestrator and retention do (retention waits 24 h). A watch
// replays every committed change: at no instant are two RRs of one fingerprint in flight, no name
// is ever issued to two RRs, the numbers of each fingerprint are 1..k each once, and every signal
// is counted once over all the RRs that ever held it, deleted ones included.
func TestStormWithCompletionsAndDeletions(t *testing.T) {
	d := stormDuration(t)
	ctx, ns := env.TestNamespace(t, "storm", d+5*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: cluster.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	iw, err := storm.WatchInFlight(ctx, wc, ns)
	if err != nil {
		t.Fatal(err)
	}

	completerCtx, stopCompleter := context.WithCancel(ctx)
	var completed, deleted, highestSeen atomic.Int64
	completerDone := make(chan struct{})
	go func() {
		defer close(completerDone)
		// Paced, not synchronised: a sweep every 20 ms completes whatever is in flight and deletes
		// whatever has finished.
		_ = wait.PollUntilContextCancel(completerCtx, 20*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			var list v1alpha1.RemediationRequestList
			if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return false, nil
			}
			for i := range list.Items {
				rr := &list.Items[i]
				if n, ok := rules.Occurrence(rr.Spec.SignalFingerprint, rr.Name); ok && n > highestSeen.Load() {
					highestSeen.Store(n)
				}
				switch {
				case rr.DeletionTimestamp != nil:
				case kubernaut.InFlight(rr, time.Now()):
					patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"overallPhase":"Completed"}}`))
					if err := env.Client.Status().Patch(ctx, rr, patch); err == nil {
						completed.Add(1)
					}
				default:
					if err := env.Client.Delete(ctx, rr); err == nil {
						deleted.Add(1)
					}
				}
			}
			return false, nil
		})
	}()
	// On a busy machine 10 s may not get that far: the storm then goes on until it has numbered
	// an RR -3 and deleted ten (at most a minute).
	s := storm.Run(ctx, env.Client, storm.Options{Namespace: ns, Fingerprints: fingerprints(ns, 50), Duration: d, Workers: 64,
		Creator: creator.Options{MaxAttempts: 30},
		Enough:  func() bool { return highestSeen.Load() >= 3 && deleted.Load() >= 10 }})
	stopCompleter()
	<-completerDone
	t.Log(s)
	most, worst, events, err := iw.Stop(ctx, env.Client, ns)
	if err != nil {
		t.Fatal(err)
	}
	life := iw.Lifetimes()
	t.Logf("watch replayed %d changes (resumed %d times): %d RRs, %d names; completed %d, deleted %d; most RRs of one fingerprint in flight at once: %d",
		events, iw.Resumed(), life.RRs, life.Names, completed.Load(), deleted.Load(), most)
	if most > 1 {
		t.Fatalf("two RRs of one fingerprint in flight together %s", worst)
	}
	if len(life.Reissued) > 0 {
		t.Fatalf("names issued to two RRs: %v", life.Reissued)
	}
	if s.Lost() != 0 || len(s.Errors) != 0 {
		t.Fatalf("%d signals lost: %v %v", s.Lost(), s.Errors, s.FirstError)
	}
	if deleted.Load() == 0 {
		t.Fatal("no RR was deleted: the storm did not exercise deletions")
	}
	numbers := map[string][]int64{}
	for _, name := range iw.Names() {
		for _, fp := range fingerprints(ns, 50) {
			if n, ok := rules.Occurrence(fp, name); ok {
				numbers[fp] = append(numbers[fp], n)
			}
		}
	}
	over, highest := 0, int64(0)
	for fp, sent := range s.PerFP {
		ns := numbers[fp]
		slices.Sort(ns)
		for i, n := range ns {
			if n != int64(i+1) {
				t.Fatalf("fingerprint %s: numbers %v are not 1..%d, each once", fp[:8], ns, len(ns))
			}
		}
		highest = max(highest, int64(len(ns)))
		if got := life.Counted[fp]; got < sent {
			t.Fatalf("fingerprint %s: %d counted over its RRs, %d signals sent", fp[:8], got, sent)
		} else {
			over += got - sent
		}
	}
	if over > s.Ambiguous {
		t.Fatalf("over-counted by %d with %d ambiguous writes", over, s.Ambiguous)
	}
	if highest < 3 {
		t.Fatalf("the highest occurrence number reached only %d: the storm did not exercise numbering", highest)
	}
	t.Logf("%d fingerprints, highest occurrence number %d", len(s.PerFP), highest)
}
