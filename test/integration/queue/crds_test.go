package queue

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/test/testenv"
)

// crdTarget is a sample's resource on its real CRD (test/integration/policies/testdata/crds),
// with no controller of its own here: the test plays it, finishing runs by their status.
type crdTarget struct {
	queue, replace string // the samples
	gvk            schema.GroupVersionKind
	labels         map[string]string
	spec           map[string]any
	// held: the object is stopped as the sample's hold stops it.
	held func(u *unstructured.Unstructured) bool
	// cancelled: what the sample's cancel (held or not) wrote.
	cancelled func(u *unstructured.Unstructured, wasHeld bool) bool
	finish    func(ctx context.Context, u *unstructured.Unstructured) error
	// lift starts a held object by hand, as its own tool would (tkn, argo resume).
	lift func(u *unstructured.Unstructured)
}

func field(u *unstructured.Unstructured, path ...string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(u.Object, path...)
	return v
}

var crdTargets = []crdTarget{
	{
		queue: "tekton-pipelinerun-queue.yaml", replace: "tekton-pipelinerun-replace.yaml",
		gvk:    schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"},
		labels: map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"},
		spec:   map[string]any{"pipelineRef": map[string]any{"name": "build"}},
		held:   func(u *unstructured.Unstructured) bool { return field(u, "spec", "status") == "PipelineRunPending" },
		cancelled: func(u *unstructured.Unstructured, _ bool) bool {
			return field(u, "spec", "status") == "Cancelled"
		},
		finish: func(ctx context.Context, u *unstructured.Unstructured) error {
			u.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "True", "reason": "Succeeded"}}}
			return env.Client.Status().Update(ctx, u)
		},
		lift: func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "status") },
	},
	{
		queue: "argo-workflow-queue.yaml", replace: "argo-workflow-replace.yaml",
		gvk:    schema.GroupVersionKind{Group: "argoproj.io", Version: "v1alpha1", Kind: "Workflow"},
		labels: map[string]string{"example.com/job": "nightly"},
		spec:   map[string]any{"entrypoint": "main"},
		held:   func(u *unstructured.Unstructured) bool { return field(u, "spec", "suspend") == true },
		// A held Workflow is resumed in the patch that terminates it (argoproj/argo-workflows#17041).
		cancelled: func(u *unstructured.Unstructured, wasHeld bool) bool {
			return field(u, "spec", "shutdown") == "Terminate" && (!wasHeld || field(u, "spec", "suspend") == nil)
		},
		// Argo's Workflow has no status subresource: its controller updates the object.
		finish: func(ctx context.Context, u *unstructured.Unstructured) error {
			u.Object["status"] = map[string]any{"phase": "Succeeded"}
			return env.Client.Update(ctx, u)
		},
		lift: func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "suspend") },
	},
}

func (tg crdTarget) object(ns string) *unstructured.Unstructured {
	return testenv.NewObject(tg.gvk, ns, tg.spec, tg.labels)
}

func (tg crdTarget) get(ctx context.Context, t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(tg.gvk)
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}

// list is the objects of ns in the order rrguard admitted them.
func (tg crdTarget) list(ctx context.Context, t *testing.T, ns string) []unstructured.Unstructured {
	t.Helper()
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(tg.gvk.GroupVersion().WithKind(tg.gvk.Kind + "List"))
	if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	at := func(u unstructured.Unstructured) string { return u.GetAnnotations()[policy.AnnotationQueued] }
	sort.Slice(l.Items, func(a, b int) bool {
		// RFC 3339 with nanoseconds, UTC: orders as text only at equal length; parse to be exact.
		ta, _ := time.Parse(time.RFC3339Nano, at(l.Items[a]))
		tb, _ := time.Parse(time.RFC3339Nano, at(l.Items[b]))
		if !ta.Equal(tb) {
			return ta.Before(tb)
		}
		return l.Items[a].GetName() < l.Items[b].GetName()
	})
	return l.Items
}

func isReleased(u *unstructured.Unstructured) bool { return testenv.Released(u) }

// awaitReleased waits until name is released, and checks the sample's hold is off it.
func (tg crdTarget) awaitReleased(ctx context.Context, t *testing.T, ns, name string) {
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
}

func (tg crdTarget) finishStored(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return tg.finish(ctx, tg.get(ctx, t, ns, name)) }); err != nil {
		t.Fatal(err)
	}
}

// The Queue and Replace samples for Tekton PipelineRuns and Argo Workflows on their real CRDs:
// 64 simultaneous creates of one key are all stored, held as the sample says, released one at a
// time in admission order as each finishes; Replace cancels the running one and the held middle
// one with the sample's patches, and releases the newest once the cancelled one has finished.
func TestSamplesOnTheirCRDs(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-crds", 4*time.Minute)
	serving(ctx, t)
	for _, tg := range crdTargets {
		t.Run(tg.gvk.Kind+"/Queue", func(t *testing.T) {
			applyCRD(ctx, t, tg, tg.queue, ns)
			order := tg.createSimultaneously(ctx, t, ns, simultaneous)
			for _, u := range order {
				if !tg.held(&u) {
					t.Fatalf("%s stored without the sample's hold: %v", u.GetName(), u.Object["spec"])
				}
			}
			const cycles = 3
			for i := range cycles {
				name := order[i].GetName()
				tg.awaitReleased(ctx, t, ns, name)
				for _, u := range tg.list(ctx, t, ns)[i+1:] {
					if isReleased(&u) {
						t.Fatalf("%s released while %s runs", u.GetName(), name)
					}
				}
				tg.finishStored(ctx, t, ns, name)
			}
			tg.awaitReleased(ctx, t, ns, order[cycles].GetName())
			deleteAll(ctx, t, tg, ns)
		})
		t.Run(tg.gvk.Kind+"/Replace64", func(t *testing.T) {
			// 64 simultaneous creates under Replace: all stored, the newest alone released, every
			// other one cancelled held (as soon as a newer one is stored), never released.
			applyCRD(ctx, t, tg, tg.replace, ns)
			order := tg.createSimultaneously(ctx, t, ns, simultaneous)
			newest := order[len(order)-1].GetName()
			tg.awaitReleased(ctx, t, ns, newest)
			for _, u := range tg.list(ctx, t, ns)[:len(order)-1] {
				if isReleased(&u) || !tg.cancelled(&u, true) {
					t.Fatalf("%s (older than %s): released %v, cancelled %v; want cancelled, never released", u.GetName(), newest, isReleased(&u), tg.cancelled(&u, true))
				}
			}
			deleteAll(ctx, t, tg, ns)
		})
		t.Run(tg.gvk.Kind+"/Replace", func(t *testing.T) {
			applyCRD(ctx, t, tg, tg.replace, ns)
			first := create(ctx, t, tg, ns)
			tg.awaitReleased(ctx, t, ns, first)
			second, third := create(ctx, t, tg, ns), create(ctx, t, tg, ns)
			var a, b *unstructured.Unstructured
			if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				a, b = tg.get(ctx, t, ns, first), tg.get(ctx, t, ns, second)
				return tg.cancelled(a, false) && tg.cancelled(b, true), nil
			}); err != nil {
				t.Fatalf("not cancelled by the sample's patches: %s %v; %s %v", first, a.Object["spec"], second, b.Object["spec"])
			}
			if isReleased(b) {
				t.Fatalf("the middle one, %s, was released", second)
			}
			// The first has not finished yet (no controller here): the third waits for it.
			time.Sleep(1500 * time.Millisecond)
			if u := tg.get(ctx, t, ns, third); isReleased(u) {
				t.Fatalf("%s released while the cancelled %s had not finished (waitForEnd)", third, first)
			}
			tg.finishStored(ctx, t, ns, first)
			tg.awaitReleased(ctx, t, ns, third)
			if u := tg.get(ctx, t, ns, second); isReleased(u) {
				t.Fatalf("the middle one, %s, was released", second)
			}
			deleteAll(ctx, t, tg, ns)
		})
	}
}

// A held run started by hand (tkn removing spec.status, argo resume): rrguard drops its hold
// annotation (one patch, rrguard_queue_lifted_total) and counts the run in flight, so the queue
// neither tries to release it again (the release's remove would fail, and the key would stall)
// nor lets the next one run beside it; the next runs when it ends.
func TestHoldLiftedByHand(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-lifted", 3*time.Minute)
	serving(ctx, t)
	for _, tg := range crdTargets {
		t.Run(tg.gvk.Kind, func(t *testing.T) {
			applyCRD(ctx, t, tg, tg.queue, ns)
			p := samplePolicy(t, tg.queue, ns)
			lifted := func() float64 {
				m, err := testenv.Metric("rrguard_queue_lifted_total", map[string]string{"policy": p.Name})
				if err != nil {
					return 0
				}
				return m.GetCounter().GetValue()
			}
			before := lifted()
			// liftByHand starts a held run as its tool would, and waits for rrguard to drop its
			// hold annotation.
			liftByHand := func(name string) error {
				if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
					u := tg.get(ctx, t, ns, name)
					tg.lift(u)
					return env.Client.Update(ctx, u)
				}); err != nil {
					return err
				}
				return wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
					return isReleased(tg.get(ctx, t, ns, name)), nil
				})
			}
			a := create(ctx, t, tg, ns)
			tg.awaitReleased(ctx, t, ns, a)
			b, c := create(ctx, t, tg, ns), create(ctx, t, tg, ns)
			if err := liftByHand(c); err != nil {
				t.Fatalf("%s started by hand still carries rrguard's hold annotation: %v", c, tg.get(ctx, t, ns, c).GetAnnotations())
			}
			// The counter rises once the controller has its patch's answer.
			if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				return lifted()-before == 1, nil
			}); err != nil {
				t.Errorf("rrguard_queue_lifted_total rose by %v, want 1", lifted()-before)
			}
			tg.finishStored(ctx, t, ns, a)
			// c runs (by hand): b waits for it.
			deadline := time.Now().Add(1500 * time.Millisecond)
			for time.Now().Before(deadline) {
				if u := tg.get(ctx, t, ns, b); isReleased(u) || !tg.held(u) {
					t.Fatalf("%s released while %s, started by hand, runs", b, c)
				}
				time.Sleep(50 * time.Millisecond)
			}
			tg.finishStored(ctx, t, ns, c)
			tg.awaitReleased(ctx, t, ns, b)
			// The key's only held run started by hand: its annotation is dropped all the same.
			d := create(ctx, t, tg, ns)
			if err := liftByHand(d); err != nil {
				t.Fatalf("%s, the key's only held run, started by hand, still carries rrguard's hold annotation", d)
			}
			deleteAll(ctx, t, tg, ns)
		})
	}
}

// simultaneous is how many creates of one key the tests send at once.
const simultaneous = 64

// createSimultaneously creates n objects of one key at once; every one must be stored. It gives
// them in admission order.
func (tg crdTarget) createSimultaneously(ctx context.Context, t *testing.T, ns string, n int) []unstructured.Unstructured {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = env.Client.Create(ctx, tg.object(ns)) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	order := tg.list(ctx, t, ns)
	if len(order) != n {
		t.Fatalf("%d stored, want %d", len(order), n)
	}
	return order
}

func create(ctx context.Context, t *testing.T, tg crdTarget, ns string) string {
	t.Helper()
	u := tg.object(ns)
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	return u.GetName()
}

// applyCRD applies a sample to ns and waits until a dry-run create is held.
func applyCRD(ctx context.Context, t *testing.T, tg crdTarget, file, ns string) {
	t.Helper()
	env.EnforceHeld(ctx, t, samplePolicy(t, file, ns), func() client.Object { return tg.object(ns) })
}

func deleteAll(ctx context.Context, t *testing.T, tg crdTarget, ns string) {
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
