// Package jobs checks the ground the concurrency modes for batch/v1 Jobs stand on, against the
// real Job controller (kube-controller-manager of the API server's release, built by make
// testbin): a suspended Job makes no Pod, the same Job unsuspended makes one, and a Job whose Pod
// the test marks Succeeded completes. What rrguard will hold and release by suspend is only as
// good as this.
package jobs

import (
	"context"
	"os"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

// The Job controller alone (the test API server runs without ServiceAccount admission, so a Pod
// needs no ServiceAccount).
func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, testenv.Options{NoKubernaut: true, Controllers: []string{"job"}}, &env))
}

func job(ns, name string, suspend bool) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: batchv1.JobSpec{
			Suspend: ptr.To(suspend),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "run", Image: "registry.k8s.io/pause:3.10"}},
			}},
		},
	}
}

// podsOf lists the Pods the Job controller made for j.
func podsOf(ctx context.Context, t *testing.T, j *batchv1.Job) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(j.Namespace), client.MatchingLabels{batchv1.JobNameLabel: j.Name}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// condition waits until j has condition c True, and returns j as stored then.
func condition(ctx context.Context, t *testing.T, j *batchv1.Job, c batchv1.JobConditionType) *batchv1.Job {
	t.Helper()
	cur := &batchv1.Job{}
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(j), cur); err != nil {
			return false, err
		}
		for _, jc := range cur.Status.Conditions {
			if jc.Type == c && jc.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("Job %s never had %s: conditions %+v: %v", j.Name, c, cur.Status.Conditions, err)
	}
	return cur
}

func TestASuspendedJobMakesNoPodUntilResumed(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "jobs", 3*time.Minute)
	held, running := job(ns, "held", true), job(ns, "running", false)
	for _, j := range []*batchv1.Job{held, running} {
		if err := env.Client.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	// The controller has seen the held Job once it records it suspended; by then it has made the
	// running one's Pod too (created in the same instant), which shows it makes Pods at all.
	condition(ctx, t, held, batchv1.JobSuspended)
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		return len(podsOf(ctx, t, running)) == 1, nil
	}); err != nil {
		t.Fatalf("the Job controller made no Pod for a Job that is not suspended: %v", err)
	}
	if pods := podsOf(ctx, t, held); len(pods) != 0 {
		t.Fatalf("a suspended Job has %d Pods", len(pods))
	}

	// Resumed, it makes its Pod; the Pod marked Succeeded (no kubelet here), the Job completes.
	if err := env.Client.Patch(ctx, held, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"suspend":false}}`))); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods := podsOf(ctx, t, held)
		if len(pods) == 1 {
			pod = pods[0]
		}
		return len(pods) == 1, nil
	}); err != nil {
		t.Fatalf("the resumed Job made no Pod: %v", err)
	}
	if err := env.Client.Status().Patch(ctx, &pod, client.RawPatch(types.MergePatchType, []byte(`{"status":{"phase":"Succeeded"}}`))); err != nil {
		t.Fatal(err)
	}
	done := condition(ctx, t, held, batchv1.JobComplete)
	if done.Status.Succeeded != 1 {
		t.Fatalf("completed Job: %d succeeded", done.Status.Succeeded)
	}
}
