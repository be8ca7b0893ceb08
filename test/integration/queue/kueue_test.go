package queue

import (
	"context"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/policy"
)

const (
	kueueQueueName = "kueue.x-k8s.io/queue-name"
	kueueGate      = "kueue.x-k8s.io/admission-gated-by"
	// rrguardGate is the gate the Kueue sample writes (config/samples/batch-job-kueue-queue.yaml).
	rrguardGate = "rrguard.kubernaut.ai/queue"
)

// kueueJob is a Job as Kueue's webhook leaves it: in a Kueue queue, suspended until Kueue admits it.
func kueueJob(ns, key string) *batchv1.Job {
	j := job(ns, key)
	j.Labels[kueueQueueName] = "team-a"
	j.Spec.Suspend = ptr.To(true)
	return j
}

// The Kueue sample on Jobs, with the real Job controller; the test plays Kueue, which is not run
// here: it admits (unsuspends) a Job only once no gate is left on it. Simultaneous creates are all
// stored, each gated by rrguard in kueue.x-k8s.io/admission-gated-by; rrguard removes one gate at
// a time, in admission order, as the Job before completes, and never writes spec.suspend, which
// stays Kueue's. A Job its creator gated is left alone. What this does not show: that Kueue itself
// honours the gate (its AdmissionGatedBy feature, Kueue's own tests).
func TestKueueSampleGatesAdmission(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "queue-kueue", 3*time.Minute)
	serving(ctx, t)
	const key = "train"
	applyFor(ctx, t, samplePolicy(t, "batch-job-kueue-queue.yaml", ns), func() *batchv1.Job { return kueueJob(ns, key) })

	const n = 4
	createAllOf(ctx, t, n, func() *batchv1.Job { return kueueJob(ns, key) })
	var order []batchv1.Job
	for _, j := range queueOrder(ctx, t, ns) {
		if j.Annotations[kueueGate] != rrguardGate || !ptr.Deref(j.Spec.Suspend, false) {
			t.Fatalf("Job %s stored without rrguard's gate (annotations %v, suspend %v)", j.Name, j.Annotations, j.Spec.Suspend)
		}
		order = append(order, j)
	}
	if len(order) != n {
		t.Fatalf("%d Jobs queued, want %d", len(order), n)
	}
	theirs := kueueJob(ns, key)
	theirs.Annotations = map[string]string{kueueGate: "example.com/quota-predictor"}
	if err := env.Client.Create(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		name := order[i].Name
		var cur *batchv1.Job
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			cur = getJob(ctx, t, ns, name)
			return released(cur), nil
		}); err != nil {
			t.Fatalf("Job %s was not released: %v (annotations %v)", name, err, cur.Annotations)
		}
		if _, gated := cur.Annotations[kueueGate]; gated || !ptr.Deref(cur.Spec.Suspend, false) {
			t.Fatalf("Job %s released: gate %q, suspend %v; want the gate gone and suspend left to Kueue", name, cur.Annotations[kueueGate], cur.Spec.Suspend)
		}
		// Kueue admits it; while it runs, the Jobs behind it stay gated.
		if err := env.Client.Patch(ctx, cur, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"suspend":false}}`))); err != nil {
			t.Fatal(err)
		}
		podOf(ctx, t, ns, name)
		for _, j := range order[i+1:] {
			if j := getJob(ctx, t, ns, j.Name); j.Annotations[kueueGate] != rrguardGate || released(j) {
				t.Fatalf("Job %s ungated while %s runs", j.Name, name)
			}
		}
		succeed(ctx, t, ns, name)
	}
	if j := getJob(ctx, t, ns, theirs.Name); j.Annotations[kueueGate] != "example.com/quota-predictor" || j.Annotations[policy.AnnotationPolicy] != "" {
		t.Fatalf("the creator's gated Job was touched: %v", j.Annotations)
	}
}
