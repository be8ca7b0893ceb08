// Package crd tests the RemediationRequest CRD itself against a real API server, with no
// webhook in the path.
package crd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{}, &env)) }

func ctxNS(t *testing.T) (context.Context, string) {
	t.Helper()
	return env.TestNamespace(t, "crd", time.Minute)
}

func TestCRDEstablished(t *testing.T) {
	ctx, _ := ctxNS(t)
	var crd apiextensionsv1.CustomResourceDefinition
	if err := env.Client.Get(ctx, types.NamespacedName{Name: "remediationrequests.kubernaut.ai"}, &crd); err != nil {
		t.Fatal(err)
	}
	established := false
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			established = true
		}
	}
	if !established {
		t.Fatalf("CRD not established: %+v", crd.Status.Conditions)
	}
	if got := crd.Spec.Names.ShortNames; len(got) != 1 || got[0] != "rr" {
		t.Errorf("short names = %v, want [rr]", got)
	}
	if v := crd.Spec.Versions[0]; v.Subresources == nil || v.Subresources.Status == nil {
		t.Error("status subresource missing")
	}
}

func TestBadFingerprintRejected(t *testing.T) {
	ctx, ns := ctxNS(t)
	good := testenv.Fingerprint("bad-fp")
	for name, fp := range map[string]string{
		"63 chars":  good[:63],
		"uppercase": strings.ToUpper(good),
		"non-hex":   "g" + good[1:],
		"missing":   "",
	} {
		t.Run(name, func(t *testing.T) {
			err := env.Client.Create(ctx, testenv.NewRR(ns, fp))
			if !apierrors.IsInvalid(err) {
				t.Fatalf("create with fingerprint %q: got %v, want Invalid", fp, err)
			}
			if !causeOn(err, "spec.signalFingerprint") {
				t.Fatalf("Invalid error does not name spec.signalFingerprint: %v", err)
			}
		})
	}
	var list v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("%d RRs stored after rejected creates", len(list.Items))
	}
}

func causeOn(err error, field string) bool {
	st, ok := err.(apierrors.APIStatus)
	if !ok || st.Status().Details == nil {
		return false
	}
	for _, c := range st.Status().Details.Causes {
		if c.Field == field {
			return true
		}
	}
	return false
}

func TestSpecImmutable(t *testing.T) {
	ctx, ns := ctxNS(t)
	rr := testenv.NewRR(ns, testenv.Fingerprint("immutable"))
	if err := env.Client.Create(ctx, rr); err != nil {
		t.Fatal(err)
	}
	rr.Spec.Severity = "warning"
	err := env.Client.Update(ctx, rr)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec is immutable") {
		t.Fatalf("spec update: got %v, want Invalid: spec is immutable", err)
	}
	// Metadata stays writable: only spec is frozen.
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), rr); err != nil {
		t.Fatal(err)
	}
	rr.Labels = map[string]string{"touched": "yes"}
	if err := env.Client.Update(ctx, rr); err != nil {
		t.Fatalf("metadata update: %v", err)
	}
}

func TestFieldSelectorOnFingerprint(t *testing.T) {
	ctx, ns := ctxNS(t)
	a, b := testenv.Fingerprint("select-a"), testenv.Fingerprint("select-b")
	want := map[string]bool{}
	for i, fp := range []string{a, b, a, b, a} {
		rr := testenv.NewRR(ns, fp)
		if err := env.Client.Create(ctx, rr); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		if fp == a {
			want[rr.Name] = true
		}
	}
	var list v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{"spec.signalFingerprint": a}); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, rr := range list.Items {
		got[rr.Name] = true
		if rr.Spec.SignalFingerprint != a {
			t.Errorf("%s has fingerprint %s", rr.Name, rr.Spec.SignalFingerprint)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("field selector returned %v, want %v", got, want)
	}
	for n := range want {
		if !got[n] {
			t.Errorf("missing %s", n)
		}
	}
}

// Kubernaut's controllers write status, some of it beyond what rrguard models; all of it must
// survive the API server unchanged.
func TestKubernautStatusRoundTrips(t *testing.T) {
	ctx, ns := ctxNS(t)
	rr := testenv.NewRR(ns, testenv.Fingerprint("status"))
	if err := env.Client.Create(ctx, rr); err != nil {
		t.Fatal(err)
	}
	status := map[string]any{
		"overallPhase": "Failed",
		"message":      "workflow failed",
		"deduplication": map[string]any{
			"firstSeenAt": "2026-11-25T10:00:00Z", "lastSeenAt": "2026-11-25T10:05:00Z", "occurrenceCount": int64(7),
		},
		"completionStatus": map[string]any{
			"outcome": "ManualReviewRequired", "failurePhase": "Executing", "failureReason": "timeout",
			"remediationTarget": map[string]any{"kind": "Deployment", "name": "checkout"},
		},
		"routingStatus": map[string]any{
			"nextAllowedExecution": "2026-11-25T11:00:00Z", "blockReason": "ConsecutiveFailures",
			"duplicateOf": "rr-x", "duplicateCount": int64(2), "cooldownRemaining": "10m",
		},
		"conditions": []any{map[string]any{
			"type": "Ready", "status": "False", "reason": "Failed", "message": "m",
			"lastTransitionTime": "2026-11-25T10:06:00Z",
		}},
		"signalProcessingRef": map[string]any{"name": "sp-x"},
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(schema.GroupVersionKind{Group: "kubernaut.ai", Version: "v1alpha1", Kind: "RemediationRequest"})
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), u); err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(u.Object, status, "status"); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Status().Update(ctx, u); err != nil {
		t.Fatalf("status update: %v", err)
	}
	back := &unstructured.Unstructured{}
	back.SetGroupVersionKind(u.GroupVersionKind())
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), back); err != nil {
		t.Fatal(err)
	}
	gotJSON, _ := (&unstructured.Unstructured{Object: map[string]any{"s": back.Object["status"]}}).MarshalJSON()
	wantJSON, _ := (&unstructured.Unstructured{Object: map[string]any{"s": status}}).MarshalJSON()
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Fatalf("status changed on the way through the API server:\n got %s\nwant %s", gotJSON, wantJSON)
	}
	// And the typed view rrguard decides on reads the fields it needs.
	var typed v1alpha1.RemediationRequest
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), &typed); err != nil {
		t.Fatal(err)
	}
	st := typed.Status
	if st.OverallPhase != v1alpha1.PhaseFailed || st.CompletionStatus.Outcome != v1alpha1.OutcomeManualReviewRequired ||
		!st.RoutingStatus.NextAllowedExecution.Equal(&metav1.Time{Time: time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC)}) ||
		st.Deduplication.OccurrenceCount != 7 {
		t.Fatalf("typed status = %+v", st)
	}
}

// The committed CRD and deepcopy code must be what `make manifests` generates from apis/: run it
// on a copy of the module and compare.
func TestGeneratedFilesUpToDate(t *testing.T) {
	tmp := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum", "Makefile", "test/tools/go.mod", "test/tools/go.sum"} {
		copyFile(t, filepath.Join(env.Root, f), filepath.Join(tmp, f))
	}
	err := filepath.WalkDir(filepath.Join(env.Root, "apis"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(env.Root, p)
		copyFile(t, p, filepath.Join(tmp, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-s", "manifests")
	cmd.Dir = tmp
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make manifests: %v\n%s", err, b)
	}
	for _, f := range []string{
		"config/crd/bases/kubernaut.ai_remediationrequests.yaml",
		"apis/kubernaut/v1alpha1/zz_generated.deepcopy.go",
		"config/crd/policies/rrguard.kubernaut.ai_uniquenesspolicies.yaml",
		"charts/rrguard/crds/rrguard.kubernaut.ai_uniquenesspolicies.yaml",
		"apis/rrguard/v1alpha1/zz_generated.deepcopy.go",
	} {
		g, err := os.ReadFile(filepath.Join(tmp, f))
		if err != nil {
			t.Fatal(err)
		}
		c, err := os.ReadFile(filepath.Join(env.Root, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(g, c) {
			t.Errorf("%s differs from what `make manifests` generates: run `make manifests` and commit", f)
		}
	}
	generated, _ := os.ReadDir(filepath.Join(tmp, "config/crd/bases"))
	committed, _ := os.ReadDir(filepath.Join(env.Root, "config/crd/bases"))
	if len(generated) != len(committed) {
		t.Errorf("make manifests generates %d CRD files, config/crd/bases holds %d", len(generated), len(committed))
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
