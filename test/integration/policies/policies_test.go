// Package policies tests UniquenessPolicies for resources other than RRs against a real API
// server: the Tekton, Argo and Job samples of config/samples, enforced by an rrguard replica through
// the same engine as RRs.
package policies

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, testenv.Options{Webhooks: true, ExtraCRDs: []string{"testdata/crds"}}, &env))
}

// target is one sample policy and how the tests make, finish and key its objects.
type target struct {
	file   string
	gvk    schema.GroupVersionKind
	labels map[string]string // the key
	key    string            // what the key expression gives for labels
	prefix string
	// spec is the object's spec; finish makes a stored object finished as its controller would.
	spec   map[string]any
	finish func(ctx context.Context, u *unstructured.Unstructured) error
}

func statusUpdate(status map[string]any) func(context.Context, *unstructured.Unstructured) error {
	return func(ctx context.Context, u *unstructured.Unstructured) error {
		u.Object["status"] = status
		return env.Client.Status().Update(ctx, u)
	}
}

var targets = []target{
	{
		file: "tekton-pipelinerun.yaml", gvk: schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"},
		labels: map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"}, key: "shop/main", prefix: "pr-",
		spec:   map[string]any{"pipelineRef": map[string]any{"name": "build"}},
		finish: statusUpdate(map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "True", "reason": "Succeeded"}}}),
	},
	{
		file: "argo-workflow.yaml", gvk: schema.GroupVersionKind{Group: "argoproj.io", Version: "v1alpha1", Kind: "Workflow"},
		labels: map[string]string{"example.com/job": "nightly"}, key: "nightly", prefix: "wf-",
		spec: map[string]any{"entrypoint": "main"},
		// Argo's Workflow has no status subresource: its controller updates the object.
		finish: func(ctx context.Context, u *unstructured.Unstructured) error {
			u.Object["status"] = map[string]any{"phase": "Succeeded"}
			return env.Client.Update(ctx, u)
		},
	},
	{
		file: "batch-job.yaml", gvk: schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"},
		labels: map[string]string{"example.com/job": "etl"}, key: "etl", prefix: "job-",
		spec: map[string]any{"template": map[string]any{"spec": map[string]any{
			"restartPolicy": "Never", "containers": []any{map[string]any{"name": "etl", "image": "busybox"}},
		}}},
		finish: jobSucceeded,
	},
}

// jobSucceeded records a Job's success as the Job controller does (the API server checks the
// status: start and completion times, SuccessCriteriaMet before Complete).
func jobSucceeded(ctx context.Context, u *unstructured.Unstructured) error {
	now := time.Now().UTC().Format(time.RFC3339)
	u.Object["status"] = map[string]any{
		"startTime": now, "completionTime": now, "succeeded": int64(1),
		"conditions": []any{
			map[string]any{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
			map[string]any{"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
		},
	}
	return env.Client.Status().Update(ctx, u)
}

func (tg target) policy(t *testing.T) *rrguardv1.UniquenessPolicy {
	t.Helper()
	return env.Sample(t, tg.file)
}

func (tg target) object(ns string) *unstructured.Unstructured {
	return testenv.NewObject(tg.gvk, ns, tg.spec, tg.labels)
}

func (tg target) name(n int64) string { return rules.NameFor(tg.prefix, rules.HashKey(tg.key), n) }

func (tg target) resource() string {
	return map[string]string{"PipelineRun": "pipelineruns", "Workflow": "workflows", "Job": "jobs"}[tg.gvk.Kind]
}

// serving runs a replica enforcing every sample policy, and points webhook configurations for
// their targets at it, as an installer's would be.
func serving(ctx context.Context, t *testing.T, adjust ...func(*serve.Options)) func() error {
	t.Helper()
	var ps []*rrguardv1.UniquenessPolicy
	for _, tg := range targets {
		ps = append(ps, tg.policy(t))
	}
	stop, err := env.ServeRRGuard(ctx, append([]func(*serve.Options){func(o *serve.Options) { o.Policies = ps }}, adjust...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// installWebhooks writes a mutating and a validating configuration with one webhook per sample
// policy, at the address and CA the suite's RR webhooks use, as an installer would for policies
// given by file; they go when the test ends.
func installWebhooks(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := writeWebhooks(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.Delete(context.Background(), &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: manualWebhooks}})
		_ = env.Client.Delete(context.Background(), &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: manualWebhooks}})
	})
}

const manualWebhooks = "rrguard-policies-from-files"

func writeWebhooks(ctx context.Context) error {
	var rr admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &rr); err != nil {
		return err
	}
	base := rr.Webhooks[0].ClientConfig
	at := func(path string) admissionregistrationv1.WebhookClientConfig {
		u, _ := url.Parse(*base.URL)
		u.Path = path
		return admissionregistrationv1.WebhookClientConfig{URL: ptr.To(u.String()), CABundle: base.CABundle}
	}
	mut := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: manualWebhooks}}
	val := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: manualWebhooks}}
	for _, tg := range targets {
		rules := []admissionregistrationv1.RuleWithOperations{{
			Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
			Rule: admissionregistrationv1.Rule{APIGroups: []string{tg.gvk.Group}, APIVersions: []string{tg.gvk.Version},
				Resources: []string{tg.resource()}, Scope: ptr.To(admissionregistrationv1.NamespacedScope)},
		}}
		name := tg.resource() + ".policies.rrguard.kubernaut.ai"
		p := "/mutate/" + map[string]string{"PipelineRun": "tekton-pipelineruns", "Workflow": "argo-workflows", "Job": "batch-jobs"}[tg.gvk.Kind]
		mut.Webhooks = append(mut.Webhooks, admissionregistrationv1.MutatingWebhook{
			Name: name, ClientConfig: at(p), Rules: rules, SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"}, FailurePolicy: ptr.To(admissionregistrationv1.Fail), TimeoutSeconds: ptr.To[int32](10),
		})
		val.Webhooks = append(val.Webhooks, admissionregistrationv1.ValidatingWebhook{
			Name: name, ClientConfig: at("/validate" + p[len("/mutate"):]), Rules: rules, SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"}, FailurePolicy: ptr.To(admissionregistrationv1.Fail), TimeoutSeconds: ptr.To[int32](10),
		})
	}
	if err := env.Client.Create(ctx, mut); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := env.Client.Create(ctx, val); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// awaitJudged waits until a dry-run create of tg in ns comes back named by rrguard: the API
// server has picked up the webhook configurations and the replica serves.
func awaitJudged(ctx context.Context, t *testing.T, tg target, ns string) {
	t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u := tg.object(ns)
		last = env.Client.Create(ctx, u, client.DryRunAll)
		named := strings.HasPrefix(u.GetName(), tg.prefix+rules.HashKey(tg.key)[:rules.KeyLen]+"-")
		return last == nil && named || apierrors.IsAlreadyExists(last), nil
	}); err != nil {
		t.Fatalf("%s creates are not judged: %v (last: %v)", tg.gvk.Kind, err, last)
	}
}

// createNext creates one more object of tg's key, retrying while the index still shows the
// finished one in flight (as a creator retries a 409 naming a finished object).
func createNext(ctx context.Context, t *testing.T, tg target, ns string) *unstructured.Unstructured {
	t.Helper()
	var u *unstructured.Unstructured
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u = tg.object(ns)
		last = env.Client.Create(ctx, u)
		return last == nil, nil
	}); err != nil {
		t.Fatalf("creating the next %s: %v (last: %v)", tg.gvk.Kind, err, last)
	}
	return u
}

func finishStored(ctx context.Context, t *testing.T, tg target, u *unstructured.Unstructured) {
	t.Helper()
	if err := retryConflict(func() error {
		cur := &unstructured.Unstructured{}
		cur.SetGroupVersionKind(tg.gvk)
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(u), cur); err != nil {
			return err
		}
		return tg.finish(ctx, cur)
	}); err != nil {
		t.Fatalf("finishing %s: %v", u.GetName(), err)
	}
}

func retryConflict(f func() error) error { return retry.RetryOnConflict(retry.DefaultRetry, f) }

// For each target: 64 simultaneous creates of one key store one object, and the 63 others are
// refused with 409 naming it; once it finishes, the next create is -2; after both are deleted and
// rrguard restarted, the next is -3 (names for life, marks scoped to the target).
func TestOneInFlightPerKey(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "policies", 4*time.Minute)
	stop := serving(ctx, t)
	installWebhooks(ctx, t)
	for _, tg := range targets {
		t.Run(tg.gvk.Kind, func(t *testing.T) {
			awaitJudged(ctx, t, tg, ns)
			const n = 64
			errs := make([]error, n)
			names := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					u := tg.object(ns)
					errs[i] = env.Client.Create(ctx, u)
					names[i] = u.GetName()
				}()
			}
			wg.Wait()
			var stored []string
			for i, err := range errs {
				switch {
				case err == nil:
					stored = append(stored, names[i])
				case !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != tg.name(1):
					t.Errorf("create %d: %v (details %q), want 409 naming %s", i, err, testenv.DetailsName(err), tg.name(1))
				}
			}
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(tg.gvk.GroupVersion().WithKind(tg.gvk.Kind + "List"))
			if err := env.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
				t.Fatal(err)
			}
			if len(stored) != 1 || stored[0] != tg.name(1) || len(list.Items) != 1 {
				t.Fatalf("64 simultaneous creates stored %v (%d listed), want only %s", stored, len(list.Items), tg.name(1))
			}
			first := &list.Items[0]
			if !slices.Contains(first.GetFinalizers(), marks.Finalizer) {
				t.Errorf("%s carries no finalizer of rrguard's: %v", first.GetName(), first.GetFinalizers())
			}
			finishStored(ctx, t, tg, first)
			second := createNext(ctx, t, tg, ns)
			if second.GetName() != tg.name(2) {
				t.Fatalf("after %s finished, the next was named %s, want %s", first.GetName(), second.GetName(), tg.name(2))
			}
			finishStored(ctx, t, tg, second)
			for _, u := range []*unstructured.Unstructured{first, second} {
				if err := env.Client.Delete(ctx, u, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
					t.Fatal(err)
				}
			}
			if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				l := &unstructured.UnstructuredList{}
				l.SetGroupVersionKind(list.GroupVersionKind())
				err := env.Client.List(ctx, l, client.InNamespace(ns))
				return err == nil && len(l.Items) == 0, nil
			}); err != nil {
				t.Fatalf("%s and %s not released and gone: %v", tg.name(1), tg.name(2), err)
			}
		})
	}
	// Every object of every target is gone: only the marks know their numbers.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	serving(ctx, t)
	for _, tg := range targets {
		awaitJudged(ctx, t, tg, ns)
		if u := createNext(ctx, t, tg, ns); u.GetName() != tg.name(3) {
			t.Errorf("%s after a restart with -1 and -2 deleted: %s, want %s", tg.gvk.Kind, u.GetName(), tg.name(3))
		}
	}
}

// A Job a CronJob owns is left alone: it keeps the name its controller chose, and two of one label
// may run at once. rrguard's own namespace is never judged either.
func TestJobsOfACronJobAreLeftAlone(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "cronjob", 2*time.Minute)
	serving(ctx, t)
	installWebhooks(ctx, t)
	jobs := targets[2]
	awaitJudged(ctx, t, jobs, ns)
	for i := range 2 {
		u := jobs.object(ns)
		u.SetGenerateName("")
		u.SetName(fmt.Sprintf("nightly-%d", i))
		u.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "CronJob", Name: "nightly", UID: "3f0a5e2c-8c1d-4d3b-9a8e-000000000001"}})
		if err := env.Client.Create(ctx, u); err != nil || u.GetName() != fmt.Sprintf("nightly-%d", i) {
			t.Fatalf("CronJob's Job %d: %q, %v", i, u.GetName(), err)
		}
	}
	u := jobs.object(testenv.MarksNamespace)
	u.SetGenerateName("")
	u.SetName("in-rrguards-namespace")
	if err := env.Client.Create(ctx, u); err != nil || u.GetName() != "in-rrguards-namespace" {
		t.Fatalf("a Job in rrguard's own namespace: %q, %v", u.GetName(), err)
	}
}

// A sample applied changes nothing for objects it is not about: on each project's own CRD
// (testdata/crds: Tekton's PipelineRun and Argo's Workflow, pinned; batch/v1 Jobs), an object
// without the labels its key reads is stored as sent (its name, no finalizer), while one with
// them is judged.
func TestSamplesLeaveObjectsWithoutTheirKeyAlone(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "keyless", 2*time.Minute)
	serving(ctx, t)
	installWebhooks(ctx, t)
	for _, tg := range targets {
		t.Run(tg.gvk.Kind, func(t *testing.T) {
			awaitJudged(ctx, t, tg, ns)
			for i, labels := range []map[string]string{nil, {"unrelated": "x"}, firstLabelOnly(tg.labels)} {
				u := tg.object(ns)
				u.SetGenerateName("")
				u.SetName(fmt.Sprintf("mine-%d", i))
				u.SetLabels(labels)
				if err := env.Client.Create(ctx, u); err != nil {
					t.Fatalf("a %s labelled %v: %v", tg.gvk.Kind, labels, err)
				}
				if u.GetName() != fmt.Sprintf("mine-%d", i) || len(u.GetFinalizers()) != 0 {
					t.Fatalf("a %s labelled %v was changed: stored as %s, finalizers %v", tg.gvk.Kind, labels, u.GetName(), u.GetFinalizers())
				}
			}
			// Judged alongside: the keyed one is named, and a second while it runs refused.
			first := createNext(ctx, t, tg, ns)
			if first.GetName() != tg.name(1) {
				t.Fatalf("the keyed %s was named %s, want %s", tg.gvk.Kind, first.GetName(), tg.name(1))
			}
			if err := env.Client.Create(ctx, tg.object(ns)); !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != tg.name(1) {
				t.Fatalf("a second keyed %s while %s runs: %v", tg.gvk.Kind, tg.name(1), err)
			}
		})
	}
}

// firstLabelOnly keeps the alphabetically first of a key's labels; nil when the key has one label
// (then the object has none of them).
func firstLabelOnly(labels map[string]string) map[string]string {
	if len(labels) < 2 {
		return nil
	}
	keys := slices.Sorted(maps.Keys(labels))
	return map[string]string{keys[0]: labels[keys[0]]}
}
