package webhook

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook"
	"github.com/rrguard/rrguard/webhook/serve"
)

func fallbacks(t *testing.T, reason string) float64 {
	t.Helper()
	v, err := testenv.Counter("rrguard_consistent_list_fallbacks_total", map[string]string{"reason": reason})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// erroring is a cache whose List fails.
type erroring struct{ client.Reader }

func (erroring) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("cache: informer stopped")
}

// Every reason CachedLister falls back to a consistent List, each forced against the real API
// server and counted by rrguard_consistent_list_fallbacks_total; and the paths that need none.
func TestCachedListerFallbacks(t *testing.T) {
	ctx, ns := setup(t)
	fp := testenv.Fingerprint(ns + "/fallbacks")
	first := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	// The view follows the API server exactly until held: whatever it shows is what a cache that
	// had seen every event would show.
	view := &testenv.HeldBack{Reader: env.Client}
	lister := func(synced bool, cache client.Reader) webhook.CachedLister {
		return webhook.CachedLister{Cache: cache, API: env.Client, Synced: func() bool { return synced }}
	}
	check := func(t *testing.T, l webhook.CachedLister, reason string, want []string) {
		t.Helper()
		before := map[string]float64{}
		for _, r := range []string{"cache-not-synced", "cache-error", "candidate-taken", "newest-deleted"} {
			before[r] = fallbacks(t, r)
		}
		got, err := l.ListByFingerprint(ctx, ns, fp)
		if err != nil {
			t.Fatal(err)
		}
		if g := names(got); len(g) != len(want) || (len(g) > 0 && g[0] != want[0]) {
			t.Fatalf("listed %v, want %v", g, want)
		}
		for r, b := range before {
			delta := fallbacks(t, r) - b
			if r == reason && delta != 1 || r != reason && delta != 0 {
				t.Fatalf("fallback %s moved by %v (expected reason %q)", r, delta, reason)
			}
		}
	}

	t.Run("cache not synced", func(t *testing.T) { check(t, lister(false, view), "cache-not-synced", []string{first.Name}) })
	t.Run("cache error", func(t *testing.T) { check(t, lister(true, erroring{view}), "cache-error", []string{first.Name}) })
	t.Run("newest re-read, no fallback", func(t *testing.T) { check(t, lister(true, view), "", []string{first.Name}) })

	// The cache has not seen a newer RR of the fingerprint yet.
	empty := testenv.Fingerprint(ns + "/not-yet")
	if err := view.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, testenv.NewRR(ns, empty)); err != nil {
		t.Fatal(err)
	}
	t.Run("cache behind: the decided name is taken", func(t *testing.T) {
		l := lister(true, view)
		got, err := l.ListByFingerprint(ctx, ns, empty)
		if err != nil || len(got) != 0 {
			t.Fatalf("the held view shows %v, %v", names(got), err)
		}
		// The Namer decides -1 from that and confirms it free: it is not.
		if taken, err := l.Taken(ctx, ns, rules.Name(empty, 1)); err != nil || !taken {
			t.Fatalf("Taken(-1) = %v, %v", taken, err)
		}
		before := fallbacks(t, "candidate-taken")
		got, err = l.Consistent(ctx, ns, empty, "candidate-taken")
		if err != nil || len(got) != 1 || got[0].Name != rules.Name(empty, 1) || fallbacks(t, "candidate-taken") != before+1 {
			t.Fatalf("got %v, %v; fallbacks %v -> %v", names(got), err, before, fallbacks(t, "candidate-taken"))
		}
	})

	// The cache still shows the newest RR, which has since been deleted.
	if err := env.Client.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	// rrguard releases it once its mark covers it.
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(first), &v1alpha1.RemediationRequest{})), nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Run("newest deleted", func(t *testing.T) { check(t, lister(true, view), "newest-deleted", nil) })
	view.Release()
}

// A cache held back on purpose (every event after an instant delayed) stores no duplicate and
// issues no name twice: where it shows an old newest RR, the name decided from it is found taken
// by the RR it missed, and a consistent List decides.
func TestHeldBackCacheStoresNoDuplicate(t *testing.T) {
	replaced(t)
	ctx, ns := env.TestNamespace(t, "held", 2*time.Minute)
	var view *testenv.HeldBack
	stop, err := env.ServeRRGuard(ctx, func(o *serve.Options) {
		o.CacheView = func(r client.Reader) client.Reader { view = &testenv.HeldBack{Reader: r}; return view }
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	fp := testenv.Fingerprint(ns + "/held")
	first := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	setStatus(ctx, t, first, v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
	// Hold the view once the cache has seen -1 completed, and nothing newer.
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var l v1alpha1.RemediationRequestList
		if err := view.Reader.List(ctx, &l, client.InNamespace(ns), client.MatchingFields{webhook.FingerprintField: fp}); err != nil {
			return false, nil
		}
		return len(l.Items) == 1 && l.Items[0].Status.OverallPhase == v1alpha1.PhaseCompleted, nil
	}); err != nil {
		t.Fatal("the cache never saw -1 completed:", err)
	}
	if err := view.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	second := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, second); err != nil || second.Name != rules.Name(fp, 2) {
		t.Fatalf("create after -1 completed: %q, %v", second.Name, err)
	}
	// The held view never shows -2: twenty concurrent creates are each named -2 from it, find the
	// name taken, fall back to a consistent List, and are refused naming -2.
	taken := fallbacks(t, "candidate-taken")
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = env.Client.Create(ctx, testenv.NewRR(ns, fp))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if !apierrors.IsAlreadyExists(err) || detailsName(err) != second.Name {
			t.Fatalf("create while -2 is in flight and unseen: %v (details %q)", err, detailsName(err))
		}
	}
	if now := fallbacks(t, "candidate-taken"); now-taken != 20 {
		t.Fatalf("%v candidate-taken fallbacks for 20 creates decided from the held view", now-taken)
	}
	// -2 finished, still unseen: the name decided (-2) is taken again, and the consistent List
	// names the next occurrence: a stale view costs a read, never a wrong name.
	setStatus(ctx, t, second, v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
	third := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, third); err != nil || third.Name != rules.Name(fp, 3) {
		t.Fatalf("create after unseen -2 completed: %q, %v", third.Name, err)
	}
	if items := list(ctx, t, ns); len(items) != 3 {
		t.Fatalf("stored %v while the cache was held", names(items))
	}
	// Released, the cache catches up: -3 in flight refuses the next create.
	view.Release()
	if err := env.Client.Create(ctx, testenv.NewRR(ns, fp)); !apierrors.IsAlreadyExists(err) || detailsName(err) != third.Name {
		t.Fatalf("after release: %v", err)
	}
}
