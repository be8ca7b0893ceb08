package queue

import (
	"context"
	"slices"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// gone waits until Job name of ns no longer exists.
func gone(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &batchv1.Job{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("Job %s was not cancelled (deleted): %v", name, err)
	}
}

// Replace on Jobs, with the real Job controller: a first Job runs; a second and a third created in
// quick succession: the first is cancelled (deleted in the foreground: its Pod goes first), the
// second is never released, and the third runs once the first is gone; never two running.
func TestReplaceNewestWins(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "replace", 3*time.Minute)
	serving(ctx, t)
	apply(ctx, t, samplePolicy(t, "batch-job-replace.yaml", ns), ns, "etl")
	obs := jobs.observe(ctx, t, ns)

	first := jobs.createHeld(ctx, t, ns, 1)[0]
	awaitRunning(ctx, t, ns, first)
	podOf(ctx, t, ns, first)
	later := jobs.createHeld(ctx, t, ns, 2)
	second, third := later[0], later[1]
	awaitRunning(ctx, t, ns, third)
	gone(ctx, t, ns, first)
	gone(ctx, t, ns, second)
	podOf(ctx, t, ns, third)
	obs.check(t, 1)
	if got := obs.releasedOrder(); !slices.Equal(got, []string{first, third}) {
		t.Fatalf("released %v, want %s then %s (%s never)", got, first, third, second)
	}
	if o := obs.overlapping(third); len(o) > 0 {
		t.Fatalf("%s released while %v still ran or wound down (waitForEnd)", third, o)
	}
}

// Replace on Jobs with 64 simultaneous creates of one key: all stored; the newest alone is
// released and runs (the Job controller makes its Pod); the 63 older ones are cancelled (deleted)
// without ever being released.
func TestReplaceSimultaneousCreates(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "replace-64", 3*time.Minute)
	serving(ctx, t)
	apply(ctx, t, samplePolicy(t, "batch-job-replace.yaml", ns), ns, "etl")
	obs := jobs.observe(ctx, t, ns)

	// Each create's answer is the Job as stored: the older ones may be cancelled before a list.
	made := createAllOf(ctx, t, 64, func() *batchv1.Job { return job(ns, "etl") })
	order := make([]batchv1.Job, len(made))
	for i, j := range made {
		order[i] = *j
	}
	inAdmissionOrder(t, order)
	newest := order[len(order)-1].Name
	awaitRunning(ctx, t, ns, newest)
	for _, j := range order[:len(order)-1] {
		gone(ctx, t, ns, j.Name)
	}
	podOf(ctx, t, ns, newest)
	obs.check(t, 1)
	if got := obs.releasedOrder(); !slices.Equal(got, []string{newest}) {
		t.Fatalf("released %v, want %s alone", got, newest)
	}
}
