package queue

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/test/testenv"
)

// target is a sample's resource as the tests drive it, one shape for all: batch/v1 Jobs with
// the real Job controller (the test plays the kubelet, and Kueue for the Kueue sample), and
// Tekton's and Argo's real CRDs (test/integration/policies/testdata/crds), whose controllers the
// test plays by writing their status.
type target struct {
	name           string
	queue, replace string // the samples; "" where the target has none
	gvk            schema.GroupVersionKind
	labels         map[string]string
	spec           map[string]any
	// held: the object is stopped as the sample's hold stops it.
	held func(u *unstructured.Unstructured) bool
	// cancelled: what the sample's cancel (held or not) did; u is nil once the object is gone.
	cancelled func(u *unstructured.Unstructured, wasHeld bool) bool
	// cancelDeletes: the sample cancels by deletion, and a cancelled run ends by going.
	cancelDeletes bool
	// ended: the run is over, as its controller reports it.
	ended func(u *unstructured.Unstructured) bool
	// run, when set, is what follows a release (the Job controller's Pod; Kueue's admission).
	run func(ctx context.Context, t *testing.T, ns, name string)
	// complete ends a released run as its controller (or kubelet) would (finish).
	complete func(ctx context.Context, t *testing.T, tg target, ns, name string)
	// lift starts a held object by hand, as its own tool would (tkn, argo resume).
	lift func(u *unstructured.Unstructured)
	// creatorHeld makes a new object held by its creator, as the sample's userHeld reads it.
	creatorHeld func(u *unstructured.Unstructured)
}

func field(u *unstructured.Unstructured, path ...string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(u.Object, path...)
	return v
}

func setField(u *unstructured.Unstructured, v any, path ...string) {
	if err := unstructured.SetNestedField(u.Object, v, path...); err != nil {
		u.Object["invalid"] = err.Error() // the create fails, naming it
	}
}

// hasCondition: one of u's status.conditions has type typ and a status in statuses.
func hasCondition(u *unstructured.Unstructured, typ string, statuses ...string) bool {
	conds, _ := field(u, "status", "conditions").([]any)
	return slices.ContainsFunc(conds, func(c any) bool {
		m, _ := c.(map[string]any)
		s, _ := m["status"].(string)
		return m["type"] == typ && slices.Contains(statuses, s)
	})
}

var (
	jobGVK = schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}
	jobs   = target{
		name: "Job", queue: "batch-job-queue.yaml", replace: "batch-job-replace.yaml",
		gvk:    jobGVK,
		labels: map[string]string{queueLabel: "etl"},
		spec: map[string]any{"template": map[string]any{"spec": map[string]any{
			"restartPolicy": "Never",
			"containers":    []any{map[string]any{"name": "run", "image": "registry.k8s.io/pause:3.10"}},
		}}},
		held: func(u *unstructured.Unstructured) bool { return field(u, "spec", "suspend") == true },
		// The Job sample cancels by a foreground deletion, held or not.
		cancelled:     func(u *unstructured.Unstructured, _ bool) bool { return u == nil || u.GetDeletionTimestamp() != nil },
		cancelDeletes: true,
		ended:         jobEnded,
		run:           func(ctx context.Context, t *testing.T, ns, name string) { podOf(ctx, t, ns, name) },
		complete: func(ctx context.Context, t *testing.T, _ target, ns, name string) {
			succeed(ctx, t, ns, name)
		},
		creatorHeld: func(u *unstructured.Unstructured) { setField(u, true, "spec", "suspend") },
	}
	// kueueJobs are Jobs as Kueue's webhook leaves them: in a Kueue queue, suspended until Kueue
	// admits them, which the test does once no gate is left (Kueue itself is not run here).
	kueueJobs = target{
		name: "KueueJob", queue: "batch-job-kueue-queue.yaml", replace: "batch-job-kueue-replace.yaml",
		gvk:    jobGVK,
		labels: map[string]string{queueLabel: "train", kueueQueueName: "team-a"},
		spec:   map[string]any{"suspend": true, "template": jobs.spec["template"]},
		held: func(u *unstructured.Unstructured) bool {
			return u.GetAnnotations()[kueueGate] == rrguardGate && field(u, "spec", "suspend") == true
		},
		cancelled:     jobs.cancelled,
		cancelDeletes: true,
		ended:         jobEnded,
		run: func(ctx context.Context, t *testing.T, ns, name string) {
			if err := env.Client.Patch(ctx, metaOf(jobGVK, ns, name), client.RawPatch(types.MergePatchType, []byte(`{"spec":{"suspend":false}}`))); err != nil {
				t.Fatal(err)
			}
			podOf(ctx, t, ns, name)
		},
		complete: jobs.complete,
		creatorHeld: func(u *unstructured.Unstructured) {
			u.SetAnnotations(map[string]string{kueueGate: "example.com/quota-predictor"})
		},
	}
	pipelineRuns = target{
		name: "PipelineRun", queue: "tekton-pipelinerun-queue.yaml", replace: "tekton-pipelinerun-replace.yaml",
		gvk:    schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"},
		labels: map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"},
		spec:   map[string]any{"pipelineRef": map[string]any{"name": "build"}},
		held:   func(u *unstructured.Unstructured) bool { return field(u, "spec", "status") == "PipelineRunPending" },
		cancelled: func(u *unstructured.Unstructured, _ bool) bool {
			return u != nil && field(u, "spec", "status") == "Cancelled"
		},
		ended: func(u *unstructured.Unstructured) bool { return hasCondition(u, "Succeeded", "True", "False") },
		complete: func(ctx context.Context, t *testing.T, tg target, ns, name string) {
			tg.update(ctx, t, ns, name, func(u *unstructured.Unstructured) error {
				u.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "True", "reason": "Succeeded"}}}
				return env.Client.Status().Update(ctx, u)
			})
		},
		lift:        func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "status") },
		creatorHeld: func(u *unstructured.Unstructured) { setField(u, "PipelineRunPending", "spec", "status") },
	}
	workflows = target{
		name: "Workflow", queue: "argo-workflow-queue.yaml", replace: "argo-workflow-replace.yaml",
		gvk:    schema.GroupVersionKind{Group: "argoproj.io", Version: "v1alpha1", Kind: "Workflow"},
		labels: map[string]string{"example.com/job": "nightly"},
		spec:   map[string]any{"entrypoint": "main"},
		held:   func(u *unstructured.Unstructured) bool { return field(u, "spec", "suspend") == true },
		// A held Workflow is resumed in the patch that terminates it (argoproj/argo-workflows#17041).
		cancelled: func(u *unstructured.Unstructured, wasHeld bool) bool {
			return u != nil && field(u, "spec", "shutdown") == "Terminate" && (!wasHeld || field(u, "spec", "suspend") == nil)
		},
		ended: func(u *unstructured.Unstructured) bool {
			return slices.Contains([]any{"Succeeded", "Failed", "Error"}, field(u, "status", "phase"))
		},
		// Argo's Workflow has no status subresource: its controller updates the object.
		complete: func(ctx context.Context, t *testing.T, tg target, ns, name string) {
			tg.update(ctx, t, ns, name, func(u *unstructured.Unstructured) error {
				u.Object["status"] = map[string]any{"phase": "Succeeded"}
				return env.Client.Update(ctx, u)
			})
		},
		lift:        func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "suspend") },
		creatorHeld: func(u *unstructured.Unstructured) { setField(u, true, "spec", "suspend") },
	}
	crdTargets = []target{pipelineRuns, workflows}
	allTargets = []target{jobs, kueueJobs, pipelineRuns, workflows}
)

func jobEnded(u *unstructured.Unstructured) bool {
	return hasCondition(u, "Complete", "True") || hasCondition(u, "Failed", "True")
}

func metaOf(gvk schema.GroupVersionKind, ns, name string) *metav1.PartialObjectMetadata {
	o := &metav1.PartialObjectMetadata{}
	o.SetGroupVersionKind(gvk)
	o.Namespace, o.Name = ns, name
	return o
}

// object is a new object of the target's key; its spec is its own (creatorHeld changes it).
func (tg target) object(ns string) *unstructured.Unstructured {
	return testenv.NewObject(tg.gvk, ns, runtime.DeepCopyJSON(tg.spec), tg.labels)
}

// resource is the target's plural name, as its requests' paths spell it.
func (tg target) resource(t *testing.T) string {
	t.Helper()
	m, err := env.Client.RESTMapper().RESTMapping(tg.gvk.GroupKind(), tg.gvk.Version)
	if err != nil {
		t.Fatal(err)
	}
	return m.Resource.Resource
}

// lookup is name as stored, nil once it is gone.
func (tg target) lookup(ctx context.Context, t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(tg.gvk)
	switch err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		t.Fatal(err)
	}
	return u
}

func (tg target) get(ctx context.Context, t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := tg.lookup(ctx, t, ns, name)
	if u == nil {
		t.Fatalf("%s %s is gone", tg.gvk.Kind, name)
	}
	return u
}

// update writes name with fn, from a fresh read on each conflict.
func (tg target) update(ctx context.Context, t *testing.T, ns, name string, fn func(*unstructured.Unstructured) error) {
	t.Helper()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return fn(tg.get(ctx, t, ns, name)) }); err != nil {
		t.Fatal(err)
	}
}

// list is the objects of ns in the order rrguard admitted them.
func (tg target) list(ctx context.Context, t *testing.T, ns string) []unstructured.Unstructured {
	t.Helper()
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(tg.gvk.GroupVersion().WithKind(tg.gvk.Kind + "List"))
	if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	inQueueOrder(l.Items)
	return l.Items
}

// inQueueOrder sorts objects in the order rrguard admitted them, the name breaking ties.
func inQueueOrder(items []unstructured.Unstructured) {
	at := func(u unstructured.Unstructured) string { return u.GetAnnotations()[policy.AnnotationQueued] }
	sort.Slice(items, func(a, b int) bool {
		// RFC 3339 with nanoseconds, UTC: orders as text only at equal length; parse to be exact.
		ta, _ := time.Parse(time.RFC3339Nano, at(items[a]))
		tb, _ := time.Parse(time.RFC3339Nano, at(items[b]))
		if !ta.Equal(tb) {
			return ta.Before(tb)
		}
		return items[a].GetName() < items[b].GetName()
	})
}

func isReleased(u *unstructured.Unstructured) bool { return testenv.Released(u) }

// awaitReleased waits until name is released, checks the sample's hold is off it, and plays
// what follows a release (run).
func (tg target) awaitReleased(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	var u *unstructured.Unstructured
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u = tg.get(ctx, t, ns, name)
		return isReleased(u), nil
	}); err != nil {
		t.Fatalf("%s %s not released: %v (annotations %v)", tg.gvk.Kind, name, err, u.GetAnnotations())
	}
	if tg.held(u) {
		t.Fatalf("%s %s released but still stopped by the hold: %v", tg.gvk.Kind, name, u.Object["spec"])
	}
	if tg.run != nil {
		tg.run(ctx, t, ns, name)
	}
}

// finish ends name's run as its controller would.
func (tg target) finish(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	tg.complete(ctx, t, tg, ns, name)
}

// windDown ends a cancelled run: it finishes as its controller reports a cancelled run, or,
// cancelled by deletion, is gone once its dependents are.
func (tg target) windDown(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if !tg.cancelDeletes {
		tg.finish(ctx, t, ns, name)
		return
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		return tg.lookup(ctx, t, ns, name) == nil, nil
	}); err != nil {
		t.Fatalf("%s %s, cancelled, is not gone: %v", tg.gvk.Kind, name, err)
	}
}

// awaitCancelled waits until the sample's cancel has hit name.
func (tg target) awaitCancelled(ctx context.Context, t *testing.T, ns, name string, wasHeld bool) {
	t.Helper()
	var u *unstructured.Unstructured
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u = tg.lookup(ctx, t, ns, name)
		return tg.cancelled(u, wasHeld), nil
	}); err != nil {
		t.Fatalf("%s %s not cancelled by the sample: %v (%v)", tg.gvk.Kind, name, err, u)
	}
}

// createHeld creates n objects one after another (so their admission order is the order
// returned), each stored held, and returns their names.
func (tg target) createHeld(ctx context.Context, t *testing.T, ns string, n int) []string {
	t.Helper()
	var out []string
	for range n {
		u := tg.object(ns)
		if err := env.Client.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
		if u.GetAnnotations()[policy.AnnotationHeld] == "" || !tg.held(u) {
			t.Fatalf("%s %s stored without the sample's hold: %v, %v", tg.gvk.Kind, u.GetName(), u.GetAnnotations(), u.Object["spec"])
		}
		out = append(out, u.GetName())
	}
	return out
}

// stillHeld asserts that every one of names is held as the sample holds it, and stays so for a
// while (0: now).
func (tg target) stillHeld(ctx context.Context, t *testing.T, ns string, names []string, for_ time.Duration) {
	t.Helper()
	deadline := time.Now().Add(for_)
	for {
		for _, n := range names {
			if u := tg.get(ctx, t, ns, n); isReleased(u) || !tg.held(u) {
				t.Fatalf("%s %s released (annotations %v, spec %v) while it should stay held", tg.gvk.Kind, n, u.GetAnnotations(), u.Object["spec"])
			}
		}
		if !time.Now().Before(deadline) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deleteByUser deletes name as a user would (its dependents in the background); an object
// rrguard's cancel already deleted is no error.
func (tg target) deleteByUser(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	err := env.Client.Delete(ctx, metaOf(tg.gvk, ns, name), client.PropagationPolicy(metav1.DeletePropagationBackground))
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// simultaneous is how many creates of one key the tests send at once.
const simultaneous = 64

// createSimultaneously creates n objects of one key at once (createAllOf); every one must be
// stored. It gives them as their creates' answers show them, in admission order.
func (tg target) createSimultaneously(ctx context.Context, t *testing.T, ns string, n int) []unstructured.Unstructured {
	t.Helper()
	var made []unstructured.Unstructured
	for _, u := range createAllOf(ctx, t, n, func() *unstructured.Unstructured { return tg.object(ns) }) {
		made = append(made, *u)
	}
	inQueueOrder(made)
	return made
}

func (tg target) create(ctx context.Context, t *testing.T, ns string) string {
	t.Helper()
	u := tg.object(ns)
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	return u.GetName()
}

// apply applies a sample to ns, waits until a dry-run create is held, and returns the policy's
// name.
func (tg target) apply(ctx context.Context, t *testing.T, file, ns string) string {
	t.Helper()
	p := samplePolicy(t, file, ns)
	env.EnforceHeld(ctx, t, p, func() client.Object { return tg.object(ns) })
	return p.Name
}

func (tg target) deleteAll(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(tg.gvk)
	if err := env.Client.DeleteAllOf(ctx, u, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		return len(tg.list(ctx, t, ns)) == 0, nil
	}); err != nil {
		t.Fatal(err)
	}
}
