package marks

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

// createUnjudged creates rr as it is, with no rrguard in the path (inside env.WithoutWebhooks):
// until the API server drops the webhook configurations, creates are renamed or refused, so it
// tries until one is stored under rr's own name.
func createUnjudged(ctx context.Context, t *testing.T, rr *v1alpha1.RemediationRequest) *v1alpha1.RemediationRequest {
	t.Helper()
	var stored *v1alpha1.RemediationRequest
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		c := rr.DeepCopy()
		if err := env.Client.Create(ctx, c); err != nil || c.Name != rr.Name {
			if err == nil {
				_ = env.Client.Delete(ctx, c)
			}
			return false, nil
		}
		stored = c
		return true, nil
	}); err != nil {
		t.Fatalf("could not create %s without rrguard: %v", rr.Name, err)
	}
	return stored
}

// released waits until rr no longer carries rrguard's finalizer, and returns its age then.
func released(ctx context.Context, t *testing.T, rr *v1alpha1.RemediationRequest, within time.Duration) time.Duration {
	t.Helper()
	var cur v1alpha1.RemediationRequest
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, within, true, func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), &cur); err != nil {
			return false, err
		}
		return !slices.Contains(cur.Finalizers, marks.Finalizer), nil
	}); err != nil {
		t.Fatalf("%s still carries rrguard's finalizer %s after its creation: %v", rr.Name, within, err)
	}
	return time.Since(cur.CreationTimestamp.Time)
}

func markOf(ctx context.Context, t *testing.T, rr *v1alpha1.RemediationRequest) int64 {
	t.Helper()
	store := marks.Store{Namespace: testenv.MarksNamespace, Reader: env.Client}
	m, err := store.Get(ctx, rr.Namespace, rr.Spec.SignalFingerprint)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// An RR past the hold loses rrguard's finalizer while it lives, its number covered by the mark
// first; Kubernaut's retention then deletes it in one step. A watch of the whole round (create,
// release, complete, delete) sees exactly one update from rrguard, the finalizer's removal, and no
// update at deletion (with a finalizer, deletion is an update that sets deletionTimestamp, which
// makes Kubernaut's orchestrator reconcile, delete and audit a second time).
func TestReleasedAfterTheHold(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "early", 3*time.Minute)
	const hold = 2 * time.Second
	serving(ctx, t, func(o *serve.Options) { o.ReleaseMinAge, o.ReleaseEvery = hold, 100*time.Millisecond })
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(ctx, &v1alpha1.RemediationRequestList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	fp := testenv.Fingerprint(ns + "/early")
	rr := create(ctx, t, ns, fp)
	if !slices.Contains(rr.Finalizers, marks.Finalizer) {
		t.Fatalf("%s admitted without rrguard's finalizer: %v", rr.Name, rr.Finalizers)
	}
	age := released(ctx, t, rr, hold+10*time.Second)
	// creationTimestamp has whole seconds: an RR can look up to 1 s older than it is.
	if age < hold-time.Second {
		t.Fatalf("released at %s old, within the %s hold", age, hold)
	}
	if m := markOf(ctx, t, rr); m < 1 {
		t.Fatalf("%s released with the mark at %d: its number is not covered", rr.Name, m)
	}
	complete(ctx, t, rr)
	took := gone(ctx, t, rr, 10*time.Second)

	var finalizerChanges, statusChanges, others int
	prev := rr.DeepCopy()
	for ev := range w.ResultChan() {
		cur, ok := ev.Object.(*v1alpha1.RemediationRequest)
		if !ok {
			t.Fatalf("watch: %s %T", ev.Type, ev.Object)
		}
		if cur.DeletionTimestamp != nil && ev.Type != watch.Deleted {
			t.Fatalf("an update set deletionTimestamp (finalizers %v): the deletion was held", cur.Finalizers)
		}
		if ev.Type == watch.Deleted {
			break
		}
		if ev.Type != watch.Modified {
			prev = cur
			continue
		}
		switch {
		case !slices.Equal(prev.Finalizers, cur.Finalizers):
			finalizerChanges++
		case prev.Status.OverallPhase != cur.Status.OverallPhase:
			statusChanges++
		default:
			others++
		}
		prev = cur
	}
	if finalizerChanges != 1 || statusChanges != 1 || others != 0 {
		t.Fatalf("updates seen: %d of the finalizers, %d of the status, %d others; want one each of the first two, none other", finalizerChanges, statusChanges, others)
	}
	if next := create(ctx, t, ns, fp); next.Name != rules.Name(fp, 2) {
		t.Fatalf("after %s was released and deleted, the next RR was named %s, want %s", rr.Name, next.Name, rules.Name(fp, 2))
	}
	t.Logf("released at %s old; deletion of the released RR took %s", age.Round(time.Millisecond), took.Round(time.Millisecond))
}

// The release removes rrguard's finalizer by a patch that tests it is the first; an RR whose first
// finalizer is another's (put there after its creation) fails that test, and is released by a
// read and a guarded patch instead: rrguard's finalizer goes, the other stays.
func TestReleasedBehindAnotherFinalizer(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "behind", 3*time.Minute)
	const hold, other = 2 * time.Second, "example.com/another"
	n := servingCounted(ctx, t, hold)
	rr := create(ctx, t, ns, testenv.Fingerprint(ns+"/behind"))
	rr.Finalizers = append([]string{other}, rr.Finalizers...)
	if err := env.Client.Update(ctx, rr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`))
		_ = env.Client.Patch(context.Background(), rr, patch)
	})
	released(ctx, t, rr, hold+10*time.Second)
	var cur v1alpha1.RemediationRequest
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), &cur); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cur.Finalizers, []string{other}) {
		t.Fatalf("after the release: finalizers %v, want only %s", cur.Finalizers, other)
	}
	// The fault hit: the tested patch failed, and the fallback read the RR.
	read := false
	for _, p := range n.Paths() {
		read = read || strings.HasSuffix(strings.SplitN(p, "?", 2)[0], "/remediationrequests/"+rr.Name)
	}
	if !read {
		t.Fatalf("rrguard released %s behind another finalizer without reading it: the tested patch cannot have failed (reads: %v)", rr.Name, n.Paths())
	}
	if m := markOf(ctx, t, rr); m < 1 {
		t.Fatalf("released with the mark at %d", m)
	}
}

// servingCounted serves a replica with the given hold, sweeping every 100 ms and seeding only at
// its start, whose requests are counted in the Requests returned.
func servingCounted(ctx context.Context, t *testing.T, hold time.Duration) *testenv.Requests {
	t.Helper()
	n := &testenv.Requests{}
	stop, err := env.ServeRRGuardWith(ctx, testenv.Counting(env.Config, n), func(o *serve.Options) {
		// No seeding pass after the first: its reads are not the release's.
		o.ReleaseMinAge, o.ReleaseEvery, o.SeedEvery = hold, 100*time.Millisecond, time.Hour
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return n
}

// A key's first mark is added without a read, by a patch that tests the entry is absent; its next
// raise, for its next RR past the hold, reads the shard (the replica noted the mark it raised).
// And a mark another replica raised, which this one's filter of marked keys does not know, makes
// the tested patch fail: the replica falls back to the read, and the mark is raised, never
// lowered.
func TestMarkRaisedWithoutARead(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "unread", 3*time.Minute)
	const hold = 2 * time.Second
	n := servingCounted(ctx, t, hold)
	// releasedAfter waits for rr's release and returns the replica's reads and mark writes it took.
	releasedAfter := func(rr *v1alpha1.RemediationRequest, want int64) (reads int64, writes []string) {
		t.Helper()
		r0, w0 := n.Reads.Load(), len(n.WritesTo("configmaps"))
		released(ctx, t, rr, hold+10*time.Second)
		if m := markOf(ctx, t, rr); m != want {
			t.Fatalf("mark %d after %s was released, want %d", m, rr.Name, want)
		}
		return n.Reads.Load() - r0, n.WritesTo("configmaps")[w0:]
	}

	fp := testenv.Fingerprint(ns + "/unread")
	first := create(ctx, t, ns, fp)
	if reads, writes := releasedAfter(first, 1); reads != 0 || len(writes) != 1 {
		t.Fatalf("a new key's first mark: %d reads, writes %v; want none and one", reads, writes)
	}
	complete(ctx, t, first)
	if reads, writes := releasedAfter(create(ctx, t, ns, fp), 2); reads != 1 || len(writes) != 1 {
		t.Fatalf("the second mark of a key this replica marked: %d reads, writes %v; want the shard read once, one write", reads, writes)
	}

	// Another replica releases the first RR of another key: it raises the mark and removes the
	// finalizer, within the hold, before this replica would.
	other := testenv.Fingerprint(ns + "/other")
	byOther := create(ctx, t, ns, other)
	store := marks.Store{Namespace: testenv.MarksNamespace, Reader: env.Client, Writer: env.Client}
	if err := store.Raise(ctx, ns, marks.ShardName(other), map[string]int64{other: 1}); err != nil {
		t.Fatal(err)
	}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`))
	if err := env.Client.Patch(ctx, byOther, patch); err != nil {
		t.Fatal(err)
	}
	complete(ctx, t, byOther)
	reads, writes := releasedAfter(create(ctx, t, ns, other), 2)
	// A shard the replica had not seen (the hand-written raise made it) is first created, which
	// finds it exists.
	if len(writes) > 0 && strings.HasPrefix(writes[0], "POST") {
		writes = writes[1:]
	}
	// The fault hit: the tested patch was sent and refused, then the shard was read and written.
	if reads != 1 || len(writes) != 2 || !strings.HasPrefix(writes[0], "PATCH") || !strings.HasPrefix(writes[1], "PUT") {
		t.Fatalf("raising a mark this replica did not know of: %d reads, writes %v; want the tested PATCH refused, one read, one PUT", reads, writes)
	}

	// An entry already above the number released stays as it is: the tested patch is refused,
	// the read finds it high enough, nothing is written.
	higher := testenv.Fingerprint(ns + "/higher")
	low := create(ctx, t, ns, higher)
	if err := store.Raise(ctx, ns, marks.ShardName(higher), map[string]int64{higher: 5}); err != nil {
		t.Fatal(err)
	}
	reads, writes = releasedAfter(low, 5)
	if len(writes) > 0 && strings.HasPrefix(writes[0], "POST") {
		writes = writes[1:]
	}
	if reads != 1 || len(writes) != 1 || !strings.HasPrefix(writes[0], "PATCH") {
		t.Fatalf("releasing %s under a mark of 5: %d reads, writes %v; want the tested PATCH refused, one read, no write", low.Name, reads, writes)
	}
}

// RRs past the hold are deleted at once, with rrguard up and with it down for longer than the
// hold (nothing in their deletion calls it); their numbers stay taken.
func TestOldRRsGoWhileRRGuardIsDown(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "old-outage", 3*time.Minute)
	const hold, each = 2 * time.Second, 10
	fast := func(o *serve.Options) { o.ReleaseMinAge, o.ReleaseEvery = hold, 100*time.Millisecond }
	stop := serving(ctx, t, fast)
	var rrs []*v1alpha1.RemediationRequest
	for i := range 2 * each {
		rr := create(ctx, t, ns, testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i)))
		complete(ctx, t, rr)
		rrs = append(rrs, rr)
	}
	for _, rr := range rrs {
		released(ctx, t, rr, hold+10*time.Second)
	}
	up := deleteAll(ctx, t, rrs[:each])
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(hold + time.Second)
	// rrguard is down: a create is refused by the API server for want of it (failurePolicy Fail).
	if err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/probe"))); err == nil || !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("a create with rrguard down: %v, want the API server failing to call it", err)
	}
	down := deleteAll(ctx, t, rrs[each:])
	serving(ctx, t, fast)
	if err := env.WaitJudged(ctx, ns, true); err != nil {
		t.Fatal(err)
	}
	for _, rr := range []*v1alpha1.RemediationRequest{rrs[0], rrs[each]} {
		fp := rr.Spec.SignalFingerprint
		if next := create(ctx, t, ns, fp); next.Name != rules.Name(fp, 2) {
			t.Fatalf("after %s was deleted, the next RR was named %s, want %s", rr.Name, next.Name, rules.Name(fp, 2))
		}
	}
	t.Logf("deletion of an RR past the hold, %d each: rrguard up median %s (max %s); rrguard down median %s (max %s)",
		each, median(up), slices.Max(up), median(down), slices.Max(down))
}

// deleteAll deletes each RR and waits until it is gone, within 2 s: RRs past the hold wait for
// nothing. It returns each deletion's latency.
func deleteAll(ctx context.Context, t *testing.T, rrs []*v1alpha1.RemediationRequest) []time.Duration {
	t.Helper()
	var took []time.Duration
	for _, rr := range rrs {
		took = append(took, gone(ctx, t, rr, 2*time.Second).Round(time.Millisecond))
	}
	return took
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// The upgrade from a release that kept the finalizer for life: the RRs it admitted (one already
// deleted and waiting) are released after the new replica starts, in rounds of at most
// ReleaseBatch, with rrguard_release_backlog counting down to 0, each number covered by its mark.
func TestUpgradeReleasesLifetimeFinalizers(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "upgrade", 3*time.Minute)
	const n, batch = 12, 5
	var old []*v1alpha1.RemediationRequest
	env.WithoutWebhooks(ctx, t, func() {
		for i := range n {
			rr := testenv.NewRR(ns, testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i)))
			rr.GenerateName, rr.Name = "", rules.Name(rr.Spec.SignalFingerprint, 1)
			rr.Finalizers = []string{marks.Finalizer}
			old = append(old, createUnjudged(ctx, t, rr))
		}
	})
	if err := env.Client.Delete(ctx, old[0]); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var seen []float64
	watching, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for watching.Err() == nil {
			if m, err := testenv.Metric("rrguard_release_backlog", nil); err == nil {
				mu.Lock()
				if v := m.GetGauge().GetValue(); len(seen) == 0 || seen[len(seen)-1] != v {
					seen = append(seen, v)
				}
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	serving(ctx, t, func(o *serve.Options) { o.ReleaseBatch, o.ReleaseEvery = batch, 300*time.Millisecond })
	gone(ctx, t, old[0], 20*time.Second)
	for _, rr := range old[1:] {
		released(ctx, t, rr, 20*time.Second)
	}
	time.Sleep(100 * time.Millisecond) // the gauge is set after each round
	cancel()
	wg.Wait()
	for _, rr := range old {
		if m := markOf(ctx, t, rr); m != 1 {
			t.Errorf("mark of %s after its release: %d, want 1", rr.Name, m)
		}
	}
	// Rounds of 5 of the 12 leave 7, then 2, then 0 (6, 1, 0 when the deletion's own release
	// came first).
	var between int
	for _, v := range seen {
		if v > 0 && v < n {
			between++
		}
	}
	if between < 2 || seen[len(seen)-1] != 0 {
		t.Fatalf("rrguard_release_backlog went %v; want rounds of %d counting down (two values between 0 and %d), then 0", seen, batch, n)
	}
	var list v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, rr := range list.Items {
		if slices.Contains(rr.Finalizers, marks.Finalizer) {
			t.Errorf("%s still held", rr.Name)
		}
	}
	if len(list.Items) != n-1 {
		t.Fatalf("%d RRs left, want %d", len(list.Items), n-1)
	}
	var none v1alpha1.RemediationRequest
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(old[0]), &none); !apierrors.IsNotFound(err) {
		t.Fatalf("the deleted RR: %v", err)
	}
	t.Logf("rrguard_release_backlog: %v", seen)
}
