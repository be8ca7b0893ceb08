// Package nokubernaut runs rrguard as a team that runs Tekton and has never heard of Kubernaut
// would: a control plane with no RemediationRequest CRD and no RR webhooks, rrguard with no
// built-in policy, and the Tekton sample applied as a UniquenessPolicy on Tekton's own
// PipelineRun CRD.
package nokubernaut

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, testenv.Options{Webhooks: true, NoKubernaut: true,
		ExtraCRDs: []string{"../policies/testdata/crds/tekton-pipelinerun.yaml"}}, &env))
}

var pipelineRun = schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"}

func newRun(ns string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"pipelineRef": map[string]any{"name": "build"}}}}
	u.SetGroupVersionKind(pipelineRun)
	u.SetNamespace(ns)
	u.SetGenerateName("build-")
	u.SetLabels(map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"})
	return u
}

// From a cluster without Kubernaut to a refused duplicate: rrguard starts, the policy applied is
// enforced, 64 simultaneous creates of one branch store one and the 63 others get 409 naming it,
// and `rrguard release`, the uninstall step, releases the PipelineRun from rrguard's finalizer.
func TestTektonOnlyCluster(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "tekton", 3*time.Minute)
	rrs := &metav1.PartialObjectMetadataList{}
	rrs.SetGroupVersionKind(schema.GroupVersionKind{Group: "kubernaut.ai", Version: "v1alpha1", Kind: "RemediationRequestList"})
	if err := env.Client.List(ctx, rrs); !meta.IsNoMatchError(err) {
		t.Fatalf("the control plane serves RemediationRequests (%v): not a cluster without Kubernaut", err)
	}
	r, stop, err := env.ServeReplica(ctx, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	if r.Index(serve.RRPolicy) != nil {
		t.Fatal("the replica enforces the RR policy with no built-in policy enabled")
	}

	p := env.Sample(t, "tekton-pipelinerun.yaml")
	p.Spec.Target.Namespaces = []string{ns}
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	var st rrguardv1.UniquenessPolicyStatus
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var cur rrguardv1.UniquenessPolicy
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
			return false, err
		}
		st = cur.Status
		return meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced), nil
	}); err != nil {
		t.Fatalf("the Tekton policy is not enforced: %v (status %+v)", err, st)
	}
	if st.ConsistentRead != rrguardv1.ReadLabelSelector {
		t.Errorf("consistent read %q, want LabelSelector", st.ConsistentRead)
	}
	if m, err := testenv.Metric("rrguard_policy_enforced", map[string]string{"policy": p.Name}); err != nil || m.GetGauge().GetValue() != 1 {
		t.Errorf("rrguard_policy_enforced{policy=%q} is not 1 once the status says Enforced: %v", p.Name, err)
	}
	if _, err := testenv.Metric("rrguard_policy_enforced", map[string]string{"policy": serve.RRPolicy}); err == nil {
		t.Error("the RR policy is reported with no built-in policy enabled")
	}
	// Its webhooks call rrguard as rrguard's own options say, with nothing of the RR's to copy.
	var mut admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &mut); err != nil {
		t.Fatal(err)
	}
	if len(mut.Webhooks) != 1 || mut.Webhooks[0].ClientConfig.URL == nil || !strings.HasSuffix(*mut.Webhooks[0].ClientConfig.URL, "/mutate/"+p.Name) {
		t.Fatalf("the policies' mutating webhooks: %+v", mut.Webhooks)
	}

	name1 := rules.NameFor("pr-", rules.HashKey("shop/main"), 1)
	// The API server takes up the new webhook configuration within a moment: wait until a dry run
	// is named.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		u := newRun(ns)
		err := env.Client.Create(ctx, u, client.DryRunAll)
		return err == nil && u.GetName() == name1, nil
	}); err != nil {
		t.Fatalf("PipelineRuns are not named by rrguard: %v", err)
	}
	// `rrguard check` on the policy's target, as an operator verifies an install: a dry-run create
	// of a PipelineRun through the API server, named by rrguard.
	run := newRun(ns)
	b, err := run.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	runFile := filepath.Join(t.TempDir(), "run.json")
	if err := os.WriteFile(runFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := rrguardCmd(ctx, t, "check", "--policy", p.Name, "-f", runFile, "--namespace", ns, "--certificate", "")
	if err != nil || !strings.Contains(string(out), "OK: rrguard answered through the API server; a new pipelineruns.tekton.dev in "+ns+" would be named "+name1) {
		t.Fatalf("rrguard check: %v\n%s", err, out)
	}
	const n = 64
	errs, names := make([]error, n), make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := newRun(ns)
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
		case !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != name1:
			t.Errorf("create %d: %v, want 409 naming %s", i, err, name1)
		}
	}
	if len(stored) != 1 || stored[0] != name1 {
		t.Fatalf("64 simultaneous creates stored %v, want only %s", stored, name1)
	}

	// `rrguard audit` of the policy: through rrguard, nothing to report; in a namespace the policy
	// does not judge, two runs of one branch in flight under their creators' names are.
	out, err = rrguardCmd(ctx, t, "audit", "--policy", p.Name, "--marks-namespace", testenv.MarksNamespace)
	if err != nil || !strings.Contains(string(out), "1 pipelineruns.tekton.dev of policy "+p.Name+", 1 keys: 0 findings") {
		t.Fatalf("rrguard audit through rrguard: %v\n%s", err, out)
	}
	_, around := env.TestNamespace(t, "tekton-around", time.Minute)
	for _, name := range []string{"gitops-a", "gitops-b"} {
		u := newRun(around)
		u.SetGenerateName("")
		u.SetName(name)
		if err := env.Client.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	out, err = rrguardCmd(ctx, t, "audit", "--policy", p.Name, "--namespaces", around, "--marks-namespace", testenv.MarksNamespace)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "duplicate-in-flight\t"+around+"\t"+rules.HashKey("shop/main")+"\tgitops-a,gitops-b") ||
		strings.Count(string(out), "name-not-scheme") != 2 {
		t.Fatalf("rrguard audit around rrguard: %v\n%s", err, out)
	}

	// The uninstall step, as an operator runs it with rrguard stopped: every policy's objects.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	out, err = rrguardCmd(ctx, t, "release", "--builtin-policies=", "--marks-namespace", testenv.MarksNamespace)
	if err != nil || !strings.Contains(string(out), "OK: released 1 pipelineruns.tekton.dev of policy "+p.Name) {
		t.Fatalf("rrguard release: %v\n%s", err, out)
	}
	cur := &metav1.PartialObjectMetadata{}
	cur.SetGroupVersionKind(pipelineRun)
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name1}, cur); err != nil || slices.Contains(cur.Finalizers, marks.Finalizer) {
		t.Fatalf("%s after release: finalizers %v, %v", name1, cur.Finalizers, err)
	}
	store := marks.Store{Namespace: testenv.MarksNamespace, Reader: env.Client, Scope: marks.ScopeOf("tekton.dev", "pipelineruns")}
	if mark, err := store.Get(ctx, ns, rules.HashKey("shop/main")); err != nil || mark != 1 {
		t.Fatalf("the mark of shop/main after release: %d, %v; want 1", mark, err)
	}
}

// rrguardCmd runs the rrguard binary with args against the test's control plane, as an operator
// would, and returns its output.
func rrguardCmd(ctx context.Context, t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", "./cmd/rrguard"}, args...)...)
	cmd.Dir = env.Root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.Kubeconfig(t))
	return cmd.CombinedOutput()
}
