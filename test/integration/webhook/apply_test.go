package webhook

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

// kubectlIn runs kubectl against the test's control plane in namespace ns, with stdin as input.
func kubectlIn(ctx context.Context, t *testing.T, ns string) func(stdin string, args ...string) (string, error) {
	t.Helper()
	kubeconfig := env.Kubeconfig(t)
	return func(stdin string, args ...string) (string, error) {
		return testenv.Kubectl(ctx, kubeconfig, []byte(stdin), append([]string{"-n", ns}, args...)...)
	}
}

// manifest is an RR as a GitOps repository would hold it: a fixed name of its own.
func manifest(name, fp string) string {
	return fmt.Sprintf(`apiVersion: kubernaut.ai/v1alpha1
kind: RemediationRequest
metadata:
  name: %s
spec:
  signalFingerprint: %s
  signalName: KubePodCrashLooping
  severity: critical
  signalType: alert
  targetType: kubernetes
  targetResource: {kind: Deployment, name: checkout, namespace: shop}
  firingTime: "2026-11-25T10:00:00Z"
  receivedTime: "2026-11-25T10:00:01Z"
`, name, fp)
}

// applyTogether server-side applies the manifests at once, one kubectl each.
func applyTogether(kubectl func(string, ...string) (string, error), manifests ...string) ([]string, []error) {
	var wg sync.WaitGroup
	outs, errs := make([]string, len(manifests)), make([]error, len(manifests))
	for i, m := range manifests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = kubectl(m, "apply", "--server-side", "-f", "-")
		}()
	}
	wg.Wait()
	return outs, errs
}

// keysMatchNames asserts that every stored RR is found under the name it carries, with the same
// UID: no object whose name differs from its storage key.
func keysMatchNames(ctx context.Context, t *testing.T, ns string) []v1alpha1.RemediationRequest {
	t.Helper()
	items := list(ctx, t, ns)
	for _, rr := range items {
		var got v1alpha1.RemediationRequest
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(&rr), &got); err != nil || got.UID != rr.UID {
			t.Fatalf("RR %s (uid %s) is not stored under its own name: GET gave uid %q, %v", rr.Name, rr.UID, got.UID, err)
		}
	}
	return items
}

// The reported bug: two concurrent server-side applies of RRs named gitops-a and gitops-b with one
// fingerprint. An apply cannot be renamed, so both are refused, with a message saying what to do.
func testServerSideApplyOfForeignNamesRefused(t *testing.T) {
	ctx, ns := setup(t)
	kubectl := kubectlIn(ctx, t, ns)
	fp := testenv.Fingerprint(ns + "/gitops")
	outs, errs := applyTogether(kubectl, manifest("gitops-a", fp), manifest("gitops-b", fp))
	for i := range outs {
		if errs[i] == nil || !strings.Contains(outs[i], "server-side apply cannot create") ||
			!strings.Contains(outs[i], "kubectl create") || !strings.Contains(outs[i], rules.Name(fp, 1)) {
			t.Fatalf("apply %d: %v\n%s", i, errs[i], outs[i])
		}
	}
	if items := keysMatchNames(ctx, t, ns); len(items) != 0 {
		t.Fatalf("%d RRs stored by refused applies", len(items))
	}
	// A dry run gets the same answer.
	if out, err := kubectl(manifest("gitops-a", fp), "apply", "--server-side", "--dry-run=server", "-f", "-"); err == nil ||
		!strings.Contains(out, "server-side apply cannot create") {
		t.Fatalf("dry-run apply: %v\n%s", err, out)
	}
}

// An apply of the name rrguard would give the RR now is admitted unchanged, under that name. Two
// at once store one RR: the second either finds it stored and becomes an update (as any apply
// does), or is decided after the first was stored and is refused as its duplicate.
func testServerSideApplyOfSchemeName(t *testing.T) {
	ctx, ns := setup(t)
	kubectl := kubectlIn(ctx, t, ns)
	fp := testenv.Fingerprint(ns + "/scheme-name")
	outs, errs := applyTogether(kubectl, manifest(rules.Name(fp, 1), fp), manifest(rules.Name(fp, 1), fp))
	ok := 0
	for i := range outs {
		switch {
		case errs[i] == nil:
			ok++
		case !strings.Contains(outs[i], "AlreadyExists") || !strings.Contains(outs[i], rules.Name(fp, 1)):
			t.Fatalf("apply %d of the scheme's name: %v\n%s", i, errs[i], outs[i])
		}
	}
	if ok == 0 {
		t.Fatalf("neither apply of the scheme's name succeeded: %q", outs)
	}
	items := keysMatchNames(ctx, t, ns)
	if len(items) != 1 || items[0].Name != rules.Name(fp, 1) {
		t.Fatalf("stored %v, want one RR %s", names(items), rules.Name(fp, 1))
	}
	// While it is in flight, an apply of the next name is a duplicate: 409 naming it.
	out, err := kubectl(manifest(rules.Name(fp, 2), fp), "apply", "--server-side", "-f", "-")
	if err == nil || !strings.Contains(out, "AlreadyExists") && !strings.Contains(out, "already in flight") || !strings.Contains(out, rules.Name(fp, 1)) {
		t.Fatalf("apply of -2 while -1 is in flight: %v\n%s", err, out)
	}
	// Completed: re-applying -1 is an update of the finished RR (no new remediation); applying -2
	// starts the next occurrence; a foreign name is refused and told the next name.
	setStatus(ctx, t, &items[0], v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
	if out, err := kubectl(manifest(rules.Name(fp, 1), fp), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("re-apply of the completed RR: %v\n%s", err, out)
	}
	if out, err := kubectl(manifest("gitops-a", fp), "apply", "--server-side", "-f", "-"); err == nil || !strings.Contains(out, rules.Name(fp, 2)) {
		t.Fatalf("apply of a foreign name after completion: %v\n%s", err, out)
	}
	if out, err := kubectl(manifest(rules.Name(fp, 2), fp), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("apply of the next name after completion: %v\n%s", err, out)
	}
	if items := keysMatchNames(ctx, t, ns); len(items) != 2 {
		t.Fatalf("stored %v, want -1 and -2", names(items))
	}
}

// Client-side `kubectl apply` of an RR that does not exist is a POST: rrguard names it. Applied
// again while it is in flight, kubectl finds no RR under the manifest's name and creates again:
// 409 naming the RR in flight. After it completed, the same apply starts the next occurrence.
func testClientSideApply(t *testing.T) {
	ctx, ns := setup(t)
	kubectl := kubectlIn(ctx, t, ns)
	fp := testenv.Fingerprint(ns + "/client-side")
	m := manifest("gitops-a", fp)
	if out, err := kubectl(m, "apply", "-f", "-"); err != nil {
		t.Fatalf("client-side apply: %v\n%s", err, out)
	}
	items := keysMatchNames(ctx, t, ns)
	if len(items) != 1 || items[0].Name != rules.Name(fp, 1) {
		t.Fatalf("stored %v, want %s", names(items), rules.Name(fp, 1))
	}
	out, err := kubectl(m, "apply", "-f", "-")
	if err == nil || !strings.Contains(out, rules.Name(fp, 1)) {
		t.Fatalf("client-side re-apply while in flight: %v\n%s", err, out)
	}
	setStatus(ctx, t, &items[0], v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted})
	if out, err := kubectl(m, "apply", "-f", "-"); err != nil {
		t.Fatalf("client-side re-apply after completion: %v\n%s", err, out)
	}
	if items := keysMatchNames(ctx, t, ns); len(items) != 2 || items[1].Name != rules.Name(fp, 2) {
		t.Fatalf("stored %v, want -1 and -2", names(items))
	}
}

// Applied through a typed client (no kubectl), the refusal is a typed 422 on metadata.name.
func testServerSideApplyTypedError(t *testing.T) {
	ctx, ns := setup(t)
	rr := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest("gitops-typed", testenv.Fingerprint(ns+"/typed"))), &rr.Object); err != nil {
		t.Fatal(err)
	}
	rr.SetNamespace(ns)
	err := env.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(rr), client.FieldOwner("gitops"))
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "metadata.name") {
		t.Fatalf("typed apply: %v", err)
	}
}

func names(items []v1alpha1.RemediationRequest) []string {
	var out []string
	for _, rr := range items {
		out = append(out, rr.Name)
	}
	return out
}

// Any mutating admission, not only rrguard's, that renames a server-side apply is caught: here a
// MutatingAdmissionPolicy (in the API server, ahead of every webhook) appends "-renamed".
func testServerSideApplyRenamedByOtherMutationRefused(t *testing.T) {
	ctx, ns := setup(t)
	kubectl := kubectlIn(ctx, t, ns)
	// The policy's API is alpha in 1.32, beta in 1.34, GA in 1.36: testenv serves it on each.
	policy := fmt.Sprintf(`apiVersion: admissionregistration.k8s.io/%[2]s
kind: MutatingAdmissionPolicy
metadata: {name: rename-%[1]s}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    resourceRules:
    - {apiGroups: [kubernaut.ai], apiVersions: [v1alpha1], operations: [CREATE], resources: [remediationrequests]}
  matchConditions:
  - {name: this-test, expression: "request.namespace == '%[1]s'"}
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: "[JSONPatch{op: 'replace', path: '/metadata/name', value: object.metadata.name + '-renamed'}]"
---
apiVersion: admissionregistration.k8s.io/%[2]s
kind: MutatingAdmissionPolicyBinding
metadata: {name: rename-%[1]s}
spec:
  policyName: rename-%[1]s
`, ns, env.MutatingAdmissionPolicyVersion())
	if out, err := kubectl(policy, "apply", "-f", "-"); err != nil {
		t.Fatalf("installing the renaming policy: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectl(policy, "delete", "-f", "-") })
	fp := testenv.Fingerprint(ns + "/renamed")
	// The policy reaches the API server's admission chain a moment after it is stored: until
	// then an apply of a foreign name is refused for that name alone.
	var out string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		out, err = kubectl(manifest("gitops-a", fp), "apply", "--server-side", "-f", "-")
		if err == nil {
			return false, fmt.Errorf("an apply of a foreign name was admitted: %s", out)
		}
		return strings.Contains(out, "renamed it"), nil
	})
	if err != nil {
		t.Fatalf("the renaming policy never took effect: %v\n%s", err, out)
	}
	// The policy in effect, even an apply of the scheme's name is refused once renamed.
	if out, err := kubectl(manifest(rules.Name(fp, 1), fp), "apply", "--server-side", "-f", "-"); err == nil || !strings.Contains(out, "renamed it") {
		t.Fatalf("renamed apply of the scheme's name: %v\n%s", err, out)
	}
	if items := keysMatchNames(ctx, t, ns); len(items) != 0 {
		t.Fatalf("stored %v", names(items))
	}
}
