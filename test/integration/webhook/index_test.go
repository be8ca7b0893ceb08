package webhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

// indexReplica replaces the suite's replica with one that decides from its RR index, counting
// the API reads it makes (GETs and LISTs; watches apart).
func indexReplica(t *testing.T, adjust ...func(*serve.Options)) (*serve.Replica, *testenv.Requests) {
	t.Helper()
	return gatedIndexReplica(t, &testenv.Gate{}, adjust...)
}

// gatedIndexReplica is indexReplica whose requests pass through g.
func gatedIndexReplica(t *testing.T, g *testenv.Gate, adjust ...func(*serve.Options)) (*serve.Replica, *testenv.Requests) {
	t.Helper()
	replaced(t)
	var n testenv.Requests
	r, stop, err := env.ServeReplica(context.Background(), testenv.Gated(testenv.Counting(env.Config, &n), g),
		append([]func(*serve.Options){testenv.IndexTrusted}, adjust...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return r, &n
}

// reads runs fn and returns the API reads rrguard made meanwhile, counted twice: at its client's
// transport, and by rrguard_decision_api_reads. They must agree.
func reads(t *testing.T, n *testenv.Requests, fn func()) int64 {
	t.Helper()
	before := n.Reads.Load()
	_, sumBefore := testenv.Histogram("rrguard_decision_api_reads")
	fn()
	got := n.Reads.Load() - before
	_, sumAfter := testenv.Histogram("rrguard_decision_api_reads")
	if int64(sumAfter-sumBefore) != got {
		t.Fatalf("rrguard_decision_api_reads counted %v reads, its client made %d: %v", sumAfter-sumBefore, got, n.Paths())
	}
	return got
}

// Reads per decision with a fresh index: 0 for a new fingerprint, 0 for a repeat while in flight,
// 2 after completion (a consistent List and the mark), 1 (the mark) for a fingerprint whose RRs
// are all deleted, and 2 once the index can no longer vouch for itself (no create seen within its
// maximum lag).
func TestIndexReadsPerDecision(t *testing.T) {
	r, n := indexReplica(t)
	ctx, ns := env.TestNamespace(t, "reads", 2*time.Minute)
	// A create the index has seen proves it fresh for the next few seconds.
	prime := testenv.Fingerprint(ns + "/prime")
	if err := env.Client.Create(ctx, testenv.NewRR(ns, prime)); err != nil {
		t.Fatal(err)
	}
	waitIndexed(ctx, t, r, ns, prime, 1)
	fp := testenv.Fingerprint(ns + "/reads")
	first := testenv.NewRR(ns, fp)
	if got := reads(t, n, func() {
		if err := env.Client.Create(ctx, first); err != nil {
			t.Fatal(err)
		}
	}); got != 0 {
		t.Fatalf("new fingerprint: %d reads, want 0", got)
	}
	// The repeat is decided from the index once it has seen -1.
	waitIndexed(ctx, t, r, ns, fp, 1)
	if got := reads(t, n, func() {
		err := env.Client.Create(ctx, testenv.NewRR(ns, fp))
		if !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != first.Name {
			t.Fatalf("repeat: %v", err)
		}
	}); got != 0 {
		t.Fatalf("repeat while in flight: %d reads, want 0", got)
	}
	setStatus(ctx, t, first, v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
	if got := reads(t, n, func() {
		second := testenv.NewRR(ns, fp)
		if err := env.Client.Create(ctx, second); err != nil || second.Name != rules.Name(fp, 2) {
			t.Fatalf("after completion: %q, %v", second.Name, err)
		}
	}); got != 2 {
		t.Fatalf("new RR after completion: %d reads, want 2", got)
	}
	// Every RR of the fingerprint deleted (released after the 7 s hold, its mark raised): the
	// index shows none, but the fingerprint may have a mark, which is read: -3.
	for _, name := range []string{rules.Name(fp, 1), rules.Name(fp, 2)} {
		rr := &v1alpha1.RemediationRequest{}
		rr.Namespace, rr.Name = ns, name
		if name == rules.Name(fp, 2) {
			setStatus(ctx, t, rr, v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
		}
		if err := env.Client.Delete(ctx, rr); err != nil {
			t.Fatal(err)
		}
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		left := 0
		r.Index(serve.RRPolicy).Each(func(rr rrfacts.RR) {
			if rr.Namespace == ns && rr.Fingerprint == fp {
				left++
			}
		})
		return left == 0, nil
	}); err != nil {
		t.Fatal("the deleted RRs never left the index:", err)
	}
	// The index has been quiet for longer than its lag: a create it sees makes it fresh again.
	if err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/prime-again"))); err != nil {
		t.Fatal(err)
	}
	waitIndexed(ctx, t, r, ns, testenv.Fingerprint(ns+"/prime-again"), 1)
	if got := reads(t, n, func() {
		third := testenv.NewRR(ns, fp)
		if err := env.Client.Create(ctx, third); err != nil || third.Name != rules.Name(fp, 3) {
			t.Fatalf("after deletions: %q, %v", third.Name, err)
		}
	}); got != 1 {
		t.Fatalf("fingerprint with a mark: %d reads, want 1", got)
	}
	// Quiet for longer than the index's maximum lag: it cannot vouch for itself any more.
	notFresh := testenv.Counter("rrguard_consistent_list_fallbacks_total", map[string]string{"reason": rrfacts.ReasonNotFresh})
	waitUntrusted(ctx, t, r, ns, fp)
	if got := reads(t, n, func() {
		if err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/quiet"))); err != nil {
			t.Fatal(err)
		}
	}); got != 2 {
		t.Fatalf("index not fresh: %d reads, want 2", got)
	}
	if d := testenv.Counter("rrguard_consistent_list_fallbacks_total", map[string]string{"reason": rrfacts.ReasonNotFresh}) - notFresh; d != 1 {
		t.Fatalf("%v index-not-fresh fallbacks counted for one decision", d)
	}
}

// An index held back on purpose (its watch stream held at the replica's transport while the index
// still vouches for itself, as a late index within its maximum lag does: the lag allowed is 30 s,
// longer than the test holds it) stores no second RR and
// issues no name twice: where it misses an RR, the name it gives collides with that RR and the
// API server refuses the create; where it shows an RR in flight that has finished, the create is
// refused and goes through once the index catches up.
func TestHeldBackIndexStoresNoDuplicate(t *testing.T) {
	gate := &testenv.Gate{}
	r, n := gatedIndexReplica(t, gate, func(o *serve.Options) { o.IndexMaxLag, o.ReleaseMinAge = 30*time.Second, 40*time.Second })
	ctx, ns := env.TestNamespace(t, "held", 2*time.Minute)
	fp := testenv.Fingerprint(ns + "/held")
	gate.HoldWatches("remediationrequests")
	defer gate.Release()
	first := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	// The index never shows -1: twenty concurrent creates of a fingerprint it has never heard of
	// are each named -1 with no read, and the API server refuses each, naming -1.
	var wg sync.WaitGroup
	errs := make([]error, 20)
	got := reads(t, n, func() {
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = env.Client.Create(ctx, testenv.NewRR(ns, fp))
			}()
		}
		wg.Wait()
	})
	for _, err := range errs {
		if !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != first.Name {
			t.Fatalf("create while -1 is in flight and unseen: %v (details %q)", err, testenv.DetailsName(err))
		}
		if strings.Contains(err.Error(), "already in flight") {
			t.Fatalf("refused by rrguard, not by the API server: the index was not held back: %v", err)
		}
	}
	if got != 0 {
		t.Fatalf("%d reads for 20 decisions from the held index, want 0", got)
	}
	// -1 finished, still unseen: the name given is still -1, which the API server refuses again.
	first.Status.OverallPhase = v1alpha1.PhaseCompleted
	if err := env.Client.Status().Update(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, testenv.NewRR(ns, fp)); !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != first.Name {
		t.Fatalf("create after unseen -1 completed: %v", err)
	}
	if items := list(ctx, t, ns); len(items) != 1 {
		t.Fatalf("stored %v while the index was held", names(items))
	}
	// Released, the index catches up: the next occurrence is -2.
	gate.Release()
	if err := testenv.WaitFinishedJudged(ctx, env.Client, first); err != nil {
		t.Fatal(err)
	}
	second := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, second); err != nil || second.Name != rules.Name(fp, 2) {
		t.Fatalf("after release: %q, %v", second.Name, err)
	}
	// Held again with -2 in flight: -2 finishes unseen, and a create is refused naming -2 (a
	// stale "in flight" refuses, never admits), with no read.
	waitIndexed(ctx, t, r, ns, fp, 2)
	gate.HoldWatches("remediationrequests")
	second.Status.OverallPhase = v1alpha1.PhaseCompleted
	if err := env.Client.Status().Update(ctx, second); err != nil {
		t.Fatal(err)
	}
	if got := reads(t, n, func() {
		err := env.Client.Create(ctx, testenv.NewRR(ns, fp))
		if !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != second.Name || !strings.Contains(err.Error(), "already in flight") {
			t.Fatalf("create while the index shows -2 in flight: %v", err)
		}
	}); got != 0 {
		t.Fatalf("stale in-flight refusal: %d reads, want 0", got)
	}
	gate.Release()
	if err := testenv.WaitFinishedJudged(ctx, env.Client, second); err != nil {
		t.Fatal(err)
	}
	third := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, third); err != nil || third.Name != rules.Name(fp, 3) {
		t.Fatalf("after the second release: %q, %v", third.Name, err)
	}
	if items := list(ctx, t, ns); len(items) != 3 {
		t.Fatalf("stored %v, want -1, -2, -3", names(items))
	}
}

// With --rr-namespaces set, a create elsewhere is refused with a clear 403 and stores nothing;
// the namespace judged works as ever.
func TestNamespacesGuarded(t *testing.T) {
	judgedCtx, judged := env.TestNamespace(t, "judged", time.Minute)
	ctx, other := env.TestNamespace(t, "other", time.Minute)
	indexReplica(t, func(o *serve.Options) { o.RRNamespaces = []string{judged} })
	if err := env.Client.Create(judgedCtx, testenv.NewRR(judged, testenv.Fingerprint(judged))); err != nil {
		t.Fatal(err)
	}
	err := env.Client.Create(ctx, testenv.NewRR(other, testenv.Fingerprint(other)))
	var st apierrors.APIStatus
	if !apierrors.IsForbidden(err) || !errors.As(err, &st) || !strings.Contains(err.Error(), "--rr-namespaces") {
		t.Fatalf("create outside --rr-namespaces: %v", err)
	}
	if items := list(ctx, t, other); len(items) != 0 {
		t.Fatalf("stored %v outside --rr-namespaces", names(items))
	}
}

// waitIndexed waits until the replica's index shows the fingerprint's RR number n.
func waitIndexed(ctx context.Context, t *testing.T, r *serve.Replica, ns, fp string, n int64) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		facts, err := r.Index(serve.RRPolicy).Lookup(ns, fp, time.Now())
		if err != nil {
			return false, nil
		}
		for _, f := range facts {
			if f.N == n {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("the index never showed %s: %v", rules.Name(fp, n), err)
	}
}

// waitUntrusted waits until the replica's index no longer vouches for itself.
func waitUntrusted(ctx context.Context, t *testing.T, r *serve.Replica, ns, fp string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		_, err := r.Index(serve.RRPolicy).Lookup(ns, fp, time.Now())
		var u *rrfacts.Untrusted
		return errors.As(err, &u) && u.Reason == rrfacts.ReasonNotFresh, nil
	}); err != nil {
		t.Fatal("the index stayed fresh without creates:", err)
	}
}

// A burst after a quiet spell longer than the index's lag: the first decision reads (a
// consistent List, which costs the API server a scan of the namespace), its create proves the
// index fresh again, and the rest of the burst waits for that instead of each reading.
func TestBurstAfterQuietReadsOnce(t *testing.T) {
	r, n := indexReplica(t)
	ctx, ns := env.TestNamespace(t, "burst", 2*time.Minute)
	prime := testenv.Fingerprint(ns + "/prime")
	if err := env.Client.Create(ctx, testenv.NewRR(ns, prime)); err != nil {
		t.Fatal(err)
	}
	waitIndexed(ctx, t, r, ns, prime, 1)
	waitUntrusted(ctx, t, r, ns, prime)
	before := testenv.Counter("rrguard_consistent_list_fallbacks_total", map[string]string{"reason": rrfacts.ReasonNotFresh})
	const burst = 20
	errs := make([]error, burst)
	got := reads(t, n, func() {
		var wg sync.WaitGroup
		for i := range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(fmt.Sprintf("%s/burst/%d", ns, i))))
			}()
		}
		wg.Wait()
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	fell := testenv.Counter("rrguard_consistent_list_fallbacks_total", map[string]string{"reason": rrfacts.ReasonNotFresh}) - before
	t.Logf("%d creates after a quiet spell: %v decisions from consistent reads, %d API reads", burst, fell, got)
	if fell < 1 || fell >= burst {
		t.Fatalf("%v of %d decisions read consistently after a quiet spell: want the first, and not all", fell, burst)
	}
}
