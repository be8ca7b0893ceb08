package queue

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	"github.com/rrguard/rrguard/test/testenv"
)

// The Queue and Replace samples for Tekton PipelineRuns and Argo Workflows on their real CRDs:
// 64 simultaneous creates of one key are all stored, held as the sample says, released one at a
// time in admission order as each finishes; Replace cancels the running one and the held middle
// one with the sample's patches, and releases the newest once the cancelled one has finished.
func TestSamplesOnTheirCRDs(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-crds", 4*time.Minute)
	serving(ctx, t)
	for _, tg := range crdTargets {
		t.Run(tg.gvk.Kind+"/Queue", func(t *testing.T) {
			tg.apply(ctx, t, tg.queue, ns)
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
				tg.finish(ctx, t, ns, name)
			}
			tg.awaitReleased(ctx, t, ns, order[cycles].GetName())
			tg.deleteAll(ctx, t, ns)
		})
		t.Run(tg.gvk.Kind+"/Replace64", func(t *testing.T) {
			// 64 simultaneous creates under Replace: all stored, the newest alone released, every
			// other one cancelled held (as soon as a newer one is stored), never released.
			tg.apply(ctx, t, tg.replace, ns)
			order := tg.createSimultaneously(ctx, t, ns, simultaneous)
			newest := order[len(order)-1].GetName()
			tg.awaitReleased(ctx, t, ns, newest)
			for _, u := range tg.list(ctx, t, ns)[:len(order)-1] {
				if isReleased(&u) || !tg.cancelled(&u, true) {
					t.Fatalf("%s (older than %s): released %v, cancelled %v; want cancelled, never released", u.GetName(), newest, isReleased(&u), tg.cancelled(&u, true))
				}
			}
			tg.deleteAll(ctx, t, ns)
		})
		t.Run(tg.gvk.Kind+"/Replace", func(t *testing.T) {
			tg.apply(ctx, t, tg.replace, ns)
			first := tg.create(ctx, t, ns)
			tg.awaitReleased(ctx, t, ns, first)
			second, third := tg.create(ctx, t, ns), tg.create(ctx, t, ns)
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
			tg.finish(ctx, t, ns, first)
			tg.awaitReleased(ctx, t, ns, third)
			if u := tg.get(ctx, t, ns, second); isReleased(u) {
				t.Fatalf("the middle one, %s, was released", second)
			}
			tg.deleteAll(ctx, t, ns)
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
			policyName := tg.apply(ctx, t, tg.queue, ns)
			lifted := func() float64 {
				m, err := testenv.Metric("rrguard_queue_lifted_total", map[string]string{"policy": policyName})
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
			a := tg.create(ctx, t, ns)
			tg.awaitReleased(ctx, t, ns, a)
			b, c := tg.create(ctx, t, ns), tg.create(ctx, t, ns)
			if err := liftByHand(c); err != nil {
				t.Fatalf("%s started by hand still carries rrguard's hold annotation: %v", c, tg.get(ctx, t, ns, c).GetAnnotations())
			}
			// The counter rises once the controller has its patch's answer.
			if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				return lifted()-before == 1, nil
			}); err != nil {
				t.Errorf("rrguard_queue_lifted_total rose by %v, want 1", lifted()-before)
			}
			tg.finish(ctx, t, ns, a)
			// c runs (by hand): b waits for it.
			deadline := time.Now().Add(1500 * time.Millisecond)
			for time.Now().Before(deadline) {
				if u := tg.get(ctx, t, ns, b); isReleased(u) || !tg.held(u) {
					t.Fatalf("%s released while %s, started by hand, runs", b, c)
				}
				time.Sleep(50 * time.Millisecond)
			}
			tg.finish(ctx, t, ns, c)
			tg.awaitReleased(ctx, t, ns, b)
			// The key's only held run started by hand: its annotation is dropped all the same.
			d := tg.create(ctx, t, ns)
			if err := liftByHand(d); err != nil {
				t.Fatalf("%s, the key's only held run, started by hand, still carries rrguard's hold annotation", d)
			}
			tg.deleteAll(ctx, t, ns)
		})
	}
}
