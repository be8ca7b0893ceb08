package queue

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/test/testenv"
)

// createHeld creates n Jobs of key one after another (so their admission order is the order
// returned) and returns their names.
func createHeld(ctx context.Context, t *testing.T, ns, key string, n int) []string {
	t.Helper()
	var out []string
	for range n {
		j := job(ns, key)
		if err := env.Client.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
		if j.Annotations[policy.AnnotationHeld] == "" {
			t.Fatalf("Job %s stored without rrguard's hold: %v", j.Name, j.Annotations)
		}
		out = append(out, j.Name)
	}
	return out
}

// stillHeld asserts, for a while, that every one of names stays held and suspended.
func stillHeld(ctx context.Context, t *testing.T, ns string, names []string, for_ time.Duration) {
	t.Helper()
	deadline := time.Now().Add(for_)
	for time.Now().Before(deadline) {
		for _, n := range names {
			j := getJob(ctx, t, ns, n)
			if released(j) || !ptr.Deref(j.Spec.Suspend, false) {
				t.Fatalf("Job %s released (suspend %v, annotations %v) while it should stay held", n, j.Spec.Suspend, j.Annotations)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The creator's and the user's part: a Job created suspended is the creator's (no hold, never
// released by rrguard); a held Job deleted by a user leaves the queue; deleting the one in flight
// releases the next.
func TestQueueLeavesTheUsersPartAlone(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-user", 3*time.Minute)
	serving(ctx, t)
	apply(ctx, t, samplePolicy(t, "batch-job-queue.yaml", ns), ns, "etl")
	obs := observe(ctx, t, ns)

	mine := job(ns, "etl")
	mine.Spec.Suspend = ptr.To(true)
	if err := env.Client.Create(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if _, ok := mine.Annotations[policy.AnnotationQueued]; ok {
		t.Fatalf("a Job created suspended was taken into the queue: %v", mine.Annotations)
	}
	names := createHeld(ctx, t, ns, "etl", 4)
	awaitRunning(ctx, t, ns, names[0])
	// A user deletes the second, held: the queue goes on to the third.
	if err := env.Client.Delete(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names[1]}}, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	// Deleting the one in flight releases the next.
	if err := env.Client.Delete(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names[0]}}, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	awaitRunning(ctx, t, ns, names[2])
	stillHeld(ctx, t, ns, names[3:], time.Second)
	succeed(ctx, t, ns, names[2])
	awaitRunning(ctx, t, ns, names[3])
	if j := getJob(ctx, t, ns, mine.Name); !ptr.Deref(j.Spec.Suspend, false) || j.Annotations[policy.AnnotationPolicy] != "" {
		t.Fatalf("the creator's suspended Job was touched: suspend %v, annotations %v", j.Spec.Suspend, j.Annotations)
	}
	obs.check(t, 1)
	if got, want := obs.releasedOrder(), []string{names[0], names[2], names[3]}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("released %v, want %v", got, want)
	}
}

// holdList holds the answer to the queue controller's consistent read of a key's Jobs (a list by
// label selector), as a replica that has read and not yet released.
func holdList(g *testenv.Gate, ns string) (hit <-chan struct{}, resume chan<- struct{}) {
	return g.HoldNextResponse(func(r *http.Request) bool {
		return r.Method == http.MethodGet && r.URL.Path == "/apis/batch/v1/namespaces/"+ns+"/jobs" &&
			r.URL.Query().Get("labelSelector") != "" && r.URL.Query().Get("watch") == ""
	})
}

// Through faults, the queue goes on from the objects: a replica stopped between its read and its
// release releases nothing and the next replica releases the same Job once; with rrguard down,
// held Jobs stay held and creates fail (nothing new runs unjudged); after every replica
// restarted, and after the API server restarted, the queue goes on in admission order.
func TestQueueGoesOnThroughFaults(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-faults", 4*time.Minute)
	g := &testenv.Gate{}
	hit, resume := holdList(g, ns)
	stopA, err := env.ServeRRGuardWith(ctx, testenv.Gated(env.Config, g), testenv.IndexTrusted)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stopA() })
	apply(ctx, t, samplePolicy(t, "batch-job-queue.yaml", ns), ns, "etl")
	obs := observe(ctx, t, ns)

	names := createHeld(ctx, t, ns, "etl", 12)
	select {
	case <-hit:
	case <-ctx.Done():
		t.Fatal("the replica never read the key's Jobs")
	}
	// The replica has read; it is stopped before its release is sent, then its read returns.
	stopped := make(chan error, 1)
	go func() { stopped <- stopA() }()
	time.Sleep(200 * time.Millisecond)
	close(resume)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	// rrguard is down: every Job stays held, and a create fails rather than run unjudged.
	stillHeld(ctx, t, ns, names, 2*time.Second)
	if err := env.Client.Create(ctx, job(ns, "etl")); err == nil || !strings.Contains(err.Error(), "webhook") {
		t.Fatalf("a create with rrguard down: %v, want the webhook's failure", err)
	}

	// A new replica releases the oldest, once.
	stop := serving(ctx, t)
	awaitRunning(ctx, t, ns, names[0])
	stillHeld(ctx, t, ns, names[1:], time.Second)
	succeed(ctx, t, ns, names[0])
	awaitRunning(ctx, t, ns, names[1])

	// Every replica restarted with 10 held: the queue goes on; a create after is queued last.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	succeed(ctx, t, ns, names[1])
	stillHeld(ctx, t, ns, names[2:], time.Second)
	serving(ctx, t)
	awaitRunning(ctx, t, ns, names[2])
	names = append(names, createHeld(ctx, t, ns, "etl", 1)...)

	// The API server restarted mid-queue (etcd kept): the watches resume, the queue goes on.
	if err := env.RestartAPIServer(); err != nil {
		t.Fatal(err)
	}
	obs.awaitResumed(ctx, t, 1)
	succeed(ctx, t, ns, names[2])
	for _, n := range names[3:] {
		awaitRunning(ctx, t, ns, n)
		succeed(ctx, t, ns, n)
	}
	obs.check(t, 1)
	if got := obs.releasedOrder(); strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("released %v, want %v", got, names)
	}
}

// Queue to Forbid while Jobs are held: the held ones still run, one at a time in order (what was
// queued is not dropped), and a new create is refused with 409 naming the newest of the key until
// the queue has drained; then Forbid names the next by its key.
func TestQueueToForbidDrains(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-forbid", 3*time.Minute)
	serving(ctx, t)
	p := samplePolicy(t, "batch-job-queue.yaml", ns)
	apply(ctx, t, p, ns, "etl")
	names := createHeld(ctx, t, ns, "etl", 3)
	awaitRunning(ctx, t, ns, names[0])

	cur := &rrguardv1.UniquenessPolicy{}
	if err := env.Client.Get(ctx, types.NamespacedName{Name: p.Name}, cur); err != nil {
		t.Fatal(err)
	}
	cur.Spec.Concurrency.Mode = rrguardv1.Forbid
	if err := env.Client.Update(ctx, cur); err != nil {
		t.Fatal(err)
	}
	// Once Forbid judges: a create is refused naming the newest Job of the key.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		j := job(ns, "etl")
		last = env.Client.Create(ctx, j, client.DryRunAll)
		return apierrors.IsAlreadyExists(last), nil
	}); err != nil {
		t.Fatalf("Forbid does not refuse while Jobs are held: %v (last %v)", err, last)
	}
	if got := testenv.DetailsName(last); !slices.Contains(names, got) {
		t.Fatalf("the 409 names %q, want a Job of the queue %v", got, names)
	}
	succeed(ctx, t, ns, names[0])
	awaitRunning(ctx, t, ns, names[1])
	stillHeld(ctx, t, ns, names[2:], 500*time.Millisecond)
	succeed(ctx, t, ns, names[1])
	awaitRunning(ctx, t, ns, names[2])
	succeed(ctx, t, ns, names[2])
	// Drained: Forbid names the next Job by its key.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		j := job(ns, "etl")
		last = env.Client.Create(ctx, j)
		return last == nil && strings.HasPrefix(j.Name, "job-"), nil
	}); err != nil {
		t.Fatalf("after the queue drained, Forbid did not name the next: %v (last %v)", err, last)
	}
}

// gauge is a gauge series' value, -1 while it has none.
func gauge(name string, labels map[string]string) float64 {
	m, err := testenv.Metric(name, labels)
	if err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// What a user sees of a queue: each held Job says it is held, by which policy, for which key and
// behind what (annotations written with the hold, no write of their own); the policy's metrics
// count releases, the objects held and how long the oldest has waited, and a key whose queue has
// not moved for longer than stallAfter is counted stalled (the RRGuardQueueStalled alert's series).
func TestQueueIsVisible(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-seen", 3*time.Minute)
	serving(ctx, t)
	p := samplePolicy(t, "batch-job-queue.yaml", ns)
	p.Name = "batch-jobs-queue-seen"
	p.Spec.Concurrency.StallAfter = &metav1.Duration{Duration: time.Second}
	apply(ctx, t, p, ns, "etl")
	names := createHeld(ctx, t, ns, "etl", 1)
	awaitRunning(ctx, t, ns, names[0])
	// Queued-behind is what the index shows at admission: give its watch a moment per create.
	for range 2 {
		time.Sleep(200 * time.Millisecond)
		names = append(names, createHeld(ctx, t, ns, "etl", 1)...)
	}
	for i, n := range names[1:] {
		a := getJob(ctx, t, ns, n).Annotations
		if a[policy.AnnotationHeld] != "true" || a[policy.AnnotationPolicy] != p.Name || a[policy.AnnotationKey] != "etl" || a[policy.AnnotationBehind] != names[i] {
			t.Fatalf("held Job %s does not say why it waits: %v (want behind %s)", n, a, names[i])
		}
	}
	labels := map[string]string{"policy": p.Name}
	if got := testenv.Counter("rrguard_queue_releases_total", labels); got != 1 {
		t.Fatalf("rrguard_queue_releases_total %v, want 1", got)
	}
	// The census runs every 10 s: within two, the first Job runs on (it never ends here), so the
	// key, holding two, has moved not once for longer than its 1 s stallAfter.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 25*time.Second, true, func(context.Context) (bool, error) {
		return gauge("rrguard_queue_stalled_keys", labels) == 1 && gauge("rrguard_queue_held", labels) == 2 &&
			gauge("rrguard_queue_oldest_wait_seconds", labels) >= 1, nil
	}); err != nil {
		t.Fatalf("queue gauges: stalled %v, held %v, oldest wait %v; want 1, 2, >= 1 s",
			gauge("rrguard_queue_stalled_keys", labels), gauge("rrguard_queue_held", labels), gauge("rrguard_queue_oldest_wait_seconds", labels))
	}
}
