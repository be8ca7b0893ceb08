package queue

import (
	"context"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/test/testenv"
)

// holdList holds the answer to the next consistent read of a key's objects of tg in ns (a list by
// label selector), as a replica that has read and not yet released.
func holdList(g *testenv.Gate, tg target, resource, ns string) (hit <-chan struct{}, resume chan<- struct{}) {
	path := "/apis/" + tg.gvk.Group + "/" + tg.gvk.Version + "/namespaces/" + ns + "/" + resource
	return g.HoldNextResponse(func(r *http.Request) bool {
		return r.Method == http.MethodGet && r.URL.Path == path &&
			r.URL.Query().Get("labelSelector") != "" && r.URL.Query().Get("watch") == ""
	})
}

// serveGated runs a replica whose requests pass through g.
func serveGated(ctx context.Context, t *testing.T, g *testenv.Gate) func() error {
	t.Helper()
	stop, err := env.ServeRRGuardWith(ctx, testenv.Gated(env.Config, g), testenv.IndexTrusted)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// faults is one row of TestFaults: a namespace, the sample enforced by a replica whose
// consistent read of the key is held (killMidRelease), and a watch of the target's objects.
type faults struct {
	ctx          context.Context
	ns, resource string
	policy       string
	hit          <-chan struct{}
	resume       chan<- struct{}
	stopFirst    func() error
	obs          *observer
}

func startFaults(t *testing.T, tg target, sample string) *faults {
	t.Helper()
	f := &faults{resource: tg.resource(t)}
	f.ctx, f.ns = env.TestNamespace(t, "faults", 4*time.Minute)
	g := &testenv.Gate{}
	f.hit, f.resume = holdList(g, tg, f.resource, f.ns)
	f.stopFirst = serveGated(f.ctx, t, g)
	f.policy = tg.apply(f.ctx, t, sample, f.ns)
	f.obs = tg.observe(f.ctx, t, f.ns)
	return f
}

// killMidRelease waits for the first replica to read a key to release its first object, and
// stops it before its release is sent (the read's answer held until the replica is stopping): it
// has released nothing. It returns once the replica is down.
func (f *faults) killMidRelease(t *testing.T) {
	t.Helper()
	select {
	case <-f.hit:
	case <-f.ctx.Done():
		t.Fatal("the replica never read the key's objects")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- f.stopFirst() }()
	time.Sleep(200 * time.Millisecond)
	close(f.resume)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// downCreateFails: with rrguard down, a create fails with the webhook's failure rather than run
// unjudged.
func downCreateFails(ctx context.Context, t *testing.T, tg target, ns string) {
	t.Helper()
	if err := env.Client.Create(ctx, tg.object(ns)); err == nil || !strings.Contains(err.Error(), "webhook") {
		t.Fatalf("a create with rrguard down: %v, want the webhook's failure", err)
	}
}

// restartAPIServer restarts the API server (etcd kept) and waits for the test's watch to resume.
// kube-controller-manager starts afresh with it: this suite restarts the API server once per
// row, and after a few restarts within two minutes the Job controller's informers would wait
// 30 to 60 s to list again (localcp.Env.RestartControllers), which is client-go's backoff, not
// what these tests are about; rrguard's replica lives on through the restart.
func restartAPIServer(ctx context.Context, t *testing.T, obs *observer) {
	t.Helper()
	if err := env.RestartAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := env.RestartControllers(); err != nil {
		t.Fatal(err)
	}
	obs.awaitResumed(ctx, t, 1)
}

// The fault list, for each mode on each target (allTargets): a replica killed between its read
// and its release, rrguard down with creates before and after, every replica restarted with 10
// held, the API server restarted mid-queue, a held object deleted by a user and the one in flight
// deleted. Through all of them the queue goes on from the objects alone: nothing released twice
// or out of order, never two in flight (a cancelled run counts until it has ended).
func TestFaults(t *testing.T) {
	for _, tg := range allTargets {
		t.Run(tg.name+"/Queue", func(t *testing.T) { queueFaults(t, tg) })
		if tg.replace != "" {
			t.Run(tg.name+"/Replace", func(t *testing.T) { replaceFaults(t, tg) })
		}
	}
}

func queueFaults(t *testing.T, tg target) {
	f := startFaults(t, tg, tg.queue)
	ctx, ns, obs := f.ctx, f.ns, f.obs

	// The replica reads the key to release the oldest and is stopped before its release.
	names := tg.createHeld(ctx, t, ns, 12)
	f.killMidRelease(t)
	// rrguard down: every one stays held; a create fails.
	tg.stillHeld(ctx, t, ns, names, 2*time.Second)
	downCreateFails(ctx, t, tg, ns)

	// A new replica releases the oldest, once.
	stop := serving(ctx, t)
	tg.awaitReleased(ctx, t, ns, names[0])
	tg.stillHeld(ctx, t, ns, names[1:], time.Second)
	tg.finish(ctx, t, ns, names[0])
	tg.awaitReleased(ctx, t, ns, names[1])

	// Every replica restarted with 10 held: the queue goes on; a create after is queued last.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	tg.finish(ctx, t, ns, names[1])
	tg.stillHeld(ctx, t, ns, names[2:], time.Second)
	serving(ctx, t)
	tg.awaitReleased(ctx, t, ns, names[2])
	names = append(names, tg.createHeld(ctx, t, ns, 1)...)

	// The API server restarted mid-queue (etcd kept): the watches resume, the queue goes on.
	restartAPIServer(ctx, t, obs)
	// A user deletes a held one, then the one in flight: the next after it runs.
	tg.deleteByUser(ctx, t, ns, names[4])
	tg.deleteByUser(ctx, t, ns, names[2])
	want := append(slices.Clone(names[:4]), names[5:]...)
	for i, n := range want[3:] {
		tg.awaitReleased(ctx, t, ns, n)
		tg.stillHeld(ctx, t, ns, want[3+i+1:], 0)
		tg.finish(ctx, t, ns, n)
	}
	env.DeletePolicy(f.policy)
	obs.check(t, 1)
	if got := obs.releasedOrder(); !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v", got, want)
	}
}

func replaceFaults(t *testing.T, tg target) {
	f := startFaults(t, tg, tg.replace)
	ctx, ns, obs := f.ctx, f.ns, f.obs

	// The replica reads the key to release the first and is stopped before its release.
	first := tg.createHeld(ctx, t, ns, 1)[0]
	f.killMidRelease(t)
	tg.stillHeld(ctx, t, ns, []string{first}, 2*time.Second)
	downCreateFails(ctx, t, tg, ns)
	stop := serving(ctx, t)
	tg.awaitReleased(ctx, t, ns, first)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Every replica restarted with 10 held: a replica whose watch of the target is held, once it
	// enforces the policy, admits them held and never sees them; it stops, and the next finds
	// them all.
	blind := &testenv.Gate{}
	stopBlind := serveGated(ctx, t, blind)
	env.AwaitHeld(ctx, t, f.policy, func() client.Object { return tg.object(ns) })
	blind.HoldWatches(f.resource)
	ten := tg.createHeld(ctx, t, ns, 10)
	tg.stillHeld(ctx, t, ns, ten, time.Second)
	if u := tg.get(ctx, t, ns, first); tg.cancelled(u, false) {
		t.Fatalf("%s cancelled by a replica that never saw a newer one", first)
	}
	if err := stopBlind(); err != nil {
		t.Fatal(err)
	}
	blind.Release()
	serving(ctx, t)
	newest := ten[len(ten)-1]
	tg.awaitCancelled(ctx, t, ns, first, false)
	for _, n := range ten[:len(ten)-1] {
		tg.awaitCancelled(ctx, t, ns, n, true)
	}
	// The API server restarted while the cancelled first winds down.
	restartAPIServer(ctx, t, obs)
	tg.windDown(ctx, t, ns, first)
	tg.awaitReleased(ctx, t, ns, newest)

	// A held one deleted by its user: the one it replaced still ends, and nothing runs after.
	deleted := tg.createHeld(ctx, t, ns, 1)[0]
	tg.awaitCancelled(ctx, t, ns, newest, false)
	tg.deleteByUser(ctx, t, ns, deleted)
	tg.windDown(ctx, t, ns, newest)

	// The one in flight deleted by its user while the newer one waits for it: the newer runs.
	last := tg.createHeld(ctx, t, ns, 1)[0]
	tg.awaitReleased(ctx, t, ns, last)
	next := tg.createHeld(ctx, t, ns, 1)[0]
	tg.awaitCancelled(ctx, t, ns, last, false)
	tg.deleteByUser(ctx, t, ns, last)
	tg.awaitReleased(ctx, t, ns, next)

	env.DeletePolicy(f.policy)
	obs.check(t, 1)
	want := []string{first, newest, last, next}
	if got := obs.releasedOrder(); !slices.Equal(got, want) {
		t.Fatalf("released %v, want %v (the middle ones and the deleted %s never)", got, want, deleted)
	}
	for _, n := range want[1:] {
		if o := obs.overlapping(n); len(o) > 0 {
			t.Fatalf("%s released while %v still ran or wound down (waitForEnd)", n, o)
		}
	}
}

// What its creator holds is the creator's (a run created pending, suspended or gated by its
// own hand): rrguard does not take it into the queue, never releases it, and the key's queue
// goes on beside it.
func TestCreatorsHoldIsTheirs(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-creator", 3*time.Minute)
	serving(ctx, t)
	for _, tg := range allTargets {
		t.Run(tg.name, func(t *testing.T) {
			policyName := tg.apply(ctx, t, tg.queue, ns)
			mine := tg.object(ns)
			tg.creatorHeld(mine)
			if err := env.Client.Create(ctx, mine); err != nil {
				t.Fatal(err)
			}
			if a := mine.GetAnnotations(); a[policy.AnnotationQueued] != "" || a[policy.AnnotationPolicy] != "" {
				t.Fatalf("an object its creator held was taken into the queue: %v", a)
			}
			names := tg.createHeld(ctx, t, ns, 2)
			tg.awaitReleased(ctx, t, ns, names[0])
			tg.finish(ctx, t, ns, names[0])
			tg.awaitReleased(ctx, t, ns, names[1])
			u := tg.get(ctx, t, ns, mine.GetName())
			if a := u.GetAnnotations(); a[policy.AnnotationPolicy] != "" || a[policy.AnnotationHeld] != "" ||
				!reflect.DeepEqual(u.Object["spec"], mine.Object["spec"]) || !maps.Equal(a, mine.GetAnnotations()) {
				t.Fatalf("the creator's held %s was touched: annotations %v, spec %v", u.GetName(), a, u.Object["spec"])
			}
			env.DeletePolicy(policyName)
			tg.deleteAll(ctx, t, ns)
		})
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
	names := jobs.createHeld(ctx, t, ns, 3)
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
	jobs.stillHeld(ctx, t, ns, names[2:], 500*time.Millisecond)
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
	names := jobs.createHeld(ctx, t, ns, 1)
	awaitRunning(ctx, t, ns, names[0])
	// Queued-behind is what the index shows at admission: give its watch a moment per create.
	for range 2 {
		time.Sleep(200 * time.Millisecond)
		names = append(names, jobs.createHeld(ctx, t, ns, 1)...)
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
