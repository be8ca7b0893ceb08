package queue

import (
	"context"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	"github.com/rrguard/rrguard/test/testenv"
)

// The Queue and Replace samples for Tekton PipelineRuns and Argo Workflows on their real CRDs,
// and for Kueue's Jobs with the real Job controller: 64 simultaneous creates of one key are all
// stored, held as the sample says, released one at a time in admission order as each finishes;
// under Replace, 64 simultaneous creates leave the newest alone released, and of three quick
// creates the first is cancelled, the middle one never released, and the third released only
// once the first has ended (a watch in commit order shows nothing overlapping).
func TestSamplesOnTheirTargets(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-samples", 5*time.Minute)
	serving(ctx, t)
	for _, tg := range append(slices.Clone(crdTargets), kueueJobs) {
		t.Run(tg.name+"/Queue", func(t *testing.T) {
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
		t.Run(tg.name+"/Replace64", func(t *testing.T) {
			// 64 simultaneous creates under Replace: all stored, the newest alone released, every
			// other one cancelled held (as soon as a newer one is stored), never released.
			tg.apply(ctx, t, tg.replace, ns)
			obs := tg.observe(ctx, t, ns)
			order := tg.createSimultaneously(ctx, t, ns, simultaneous)
			newest := order[len(order)-1].GetName()
			tg.awaitReleased(ctx, t, ns, newest)
			for _, u := range order[:len(order)-1] {
				tg.awaitCancelled(ctx, t, ns, u.GetName(), true)
			}
			obs.check(t, 1)
			if got := obs.releasedOrder(); !slices.Equal(got, []string{newest}) {
				t.Fatalf("released %v, want the newest, %s, alone", got, newest)
			}
			tg.deleteAll(ctx, t, ns)
		})
		t.Run(tg.name+"/Replace", func(t *testing.T) {
			tg.apply(ctx, t, tg.replace, ns)
			obs := tg.observe(ctx, t, ns)
			first := tg.create(ctx, t, ns)
			tg.awaitReleased(ctx, t, ns, first)
			second, third := tg.create(ctx, t, ns), tg.create(ctx, t, ns)
			tg.awaitCancelled(ctx, t, ns, first, false)
			tg.awaitCancelled(ctx, t, ns, second, true)
			// The third settles before the first ends: released early, the watch shows it
			// beside the first (waitForEnd).
			time.Sleep(settle + 500*time.Millisecond)
			tg.windDown(ctx, t, ns, first)
			tg.awaitReleased(ctx, t, ns, third)
			obs.check(t, 1)
			if got := obs.releasedOrder(); !slices.Equal(got, []string{first, third}) {
				t.Fatalf("released %v, want %s then %s (the middle one, %s, never)", got, first, third, second)
			}
			if o := obs.overlapping(third); len(o) > 0 {
				t.Fatalf("%s released while %v still ran or wound down (waitForEnd)", third, o)
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
