package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/rules"
)

// listerFunc adapts a function listing typed RRs to Lister, for handler tests that need no API
// server: the RRs are judged by the RR policy, as a consistent read judges what it lists.
type listerFunc func(ctx context.Context, ns, fp string) ([]v1alpha1.RemediationRequest, error)

func (f listerFunc) ReadKey(ctx context.Context, ns, keyHex, _ string) ([]decision.Fact, error) {
	rrs, err := f(ctx, ns, keyHex)
	if err != nil {
		return nil, err
	}
	return factsOf(keyHex, rrs...)
}

func staticLister(rrs ...v1alpha1.RemediationRequest) Lister {
	return listerFunc(func(context.Context, string, string) ([]v1alpha1.RemediationRequest, error) { return rrs, nil })
}

var rrResource = metav1.GroupVersionResource{Group: "kubernaut.ai", Version: "v1alpha1", Resource: "remediationrequests"}

func createReq(raw string) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "u1", Operation: admissionv1.Create, Resource: rrResource, Namespace: "kubernaut-system",
		Kind:   metav1.GroupVersionKind{Group: "kubernaut.ai", Version: "v1alpha1", Kind: "RemediationRequest"},
		Object: runtime.RawExtension{Raw: []byte(raw)},
	}}
}

const rrJSON = `{"apiVersion":"kubernaut.ai/v1alpha1","kind":"RemediationRequest","metadata":{"generateName":"rr-"},"spec":{"signalFingerprint":"` + fp + `"}}`

func TestNamerPatches(t *testing.T) {
	h := &Namer{Policy: rrPol, Lister: staticLister(rr(rules.Name(fp, 4), phase(v1alpha1.PhaseCompleted))), Now: func() time.Time { return now }}
	resp := h.Handle(context.Background(), createReq(rrJSON))
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	got, _ := json.Marshal(resp.Patches)
	want := `[{"op":"add","path":"/metadata/name","value":"` + rules.Name(fp, 5) + `"},{"op":"remove","path":"/metadata/generateName"}]`
	if string(got) != want {
		t.Fatalf("patch = %s\nwant %s", got, want)
	}
}

func TestNamerPatchesWithoutMetadata(t *testing.T) {
	h := &Namer{Policy: rrPol, Lister: staticLister()}
	resp := h.Handle(context.Background(), createReq(`{"spec":{"signalFingerprint":"`+fp+`"}}`))
	got, _ := json.Marshal(resp.Patches)
	if want := `[{"op":"add","path":"/metadata","value":{"name":"` + rules.Name(fp, 1) + `"}}]`; !resp.Allowed || string(got) != want {
		t.Fatalf("allowed=%v patch=%s, want %s", resp.Allowed, got, want)
	}
}

func TestNamerDenials(t *testing.T) {
	listFails := listerFunc(func(context.Context, string, string) ([]v1alpha1.RemediationRequest, error) {
		return nil, errors.New("connection refused")
	})
	wrong := createReq(rrJSON)
	wrong.Resource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	status := createReq(rrJSON)
	status.SubResource = "status"
	version := createReq(rrJSON)
	version.Resource.Version = "v1beta9"
	tests := []struct {
		name   string
		lister Lister
		req    admission.Request
		code   int32
		reason metav1.StatusReason
	}{
		{"duplicate", staticLister(rr(rules.Name(fp, 1))), createReq(rrJSON), 409, metav1.StatusReasonAlreadyExists},
		{"undecodable", staticLister(), createReq(`{"spec":`), 400, metav1.StatusReasonBadRequest},
		{"wrong type of field", staticLister(), createReq(`{"spec":{"signalFingerprint":7}}`), 422, metav1.StatusReasonInvalid},
		{"not an object", staticLister(), createReq(`[1]`), 400, metav1.StatusReasonBadRequest},
		{"metadata not an object", staticLister(), createReq(`{"metadata":7,"spec":{"signalFingerprint":"` + fp + `"}}`), 400, metav1.StatusReasonBadRequest},
		{"empty body", staticLister(), createReq(``), 400, metav1.StatusReasonBadRequest},
		{"no fingerprint", staticLister(), createReq(`{"metadata":{"name":"x"},"spec":{}}`), 422, metav1.StatusReasonInvalid},
		{"wrong resource", staticLister(), wrong, 400, metav1.StatusReasonBadRequest},
		{"subresource", staticLister(), status, 400, metav1.StatusReasonBadRequest},
		{"unknown version", staticLister(), version, 400, metav1.StatusReasonBadRequest},
		{"API read fails", listFails, createReq(rrJSON), 503, metav1.StatusReasonServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := (&Namer{Policy: rrPol, Lister: tc.lister}).Handle(context.Background(), tc.req)
			if resp.Allowed || resp.Result == nil || resp.Result.Code != tc.code || resp.Result.Reason != tc.reason || resp.Result.Message == "" {
				t.Fatalf("response = allowed %v, %+v; want %d %s", resp.Allowed, resp.Result, tc.code, tc.reason)
			}
			if len(resp.Patches) != 0 {
				t.Fatalf("a denial carries patches: %+v", resp.Patches)
			}
		})
	}
}

func TestNotCreateIsLeftAlone(t *testing.T) {
	called := false
	h := &Namer{Policy: rrPol, Lister: listerFunc(func(context.Context, string, string) ([]v1alpha1.RemediationRequest, error) {
		called = true
		return nil, nil
	})}
	for _, op := range []admissionv1.Operation{admissionv1.Update, admissionv1.Delete, admissionv1.Connect} {
		req := createReq(rrJSON)
		req.Operation = op
		if resp := h.Handle(context.Background(), req); !resp.Allowed || len(resp.Patches) != 0 {
			t.Errorf("%s: %+v", op, resp)
		}
		if resp := (&Checker{Policy: rrPol}).Handle(context.Background(), req); !resp.Allowed {
			t.Errorf("checker %s: %+v", op, resp.Result)
		}
	}
	if called {
		t.Error("the API was read for a request that is not a create")
	}
}

func TestChecker(t *testing.T) {
	named := func(name string) admission.Request {
		return createReq(`{"metadata":{"name":"` + name + `"},"spec":{"signalFingerprint":"` + fp + `"}}`)
	}
	if resp := (&Checker{Policy: rrPol}).Handle(context.Background(), named(rules.Name(fp, 3))); !resp.Allowed {
		t.Fatalf("scheme name denied: %+v", resp.Result)
	}
	for _, name := range []string{"rr-3f79bb7b435b-1a2b3c4d", rules.Name(otherFP, 1), "", rules.Name(fp, 1) + "x"} {
		resp := (&Checker{Policy: rrPol}).Handle(context.Background(), named(name))
		if resp.Allowed || resp.Result.Code != 422 || resp.Result.Details.Causes[0].Field != "metadata.name" {
			t.Errorf("name %q: %+v", name, resp.Result)
		}
	}
}

// BenchmarkNamerHandle is one admission round trip through the handler: decode the request,
// read (from memory here), decide, build the patch.
func BenchmarkNamerHandle(b *testing.B) {
	// The facts are judged once, as a read's would be per decision: what is measured is the
	// handler's own work (decode, key, decide, patch), not the test lister's conversions.
	facts, err := factsOf(fp, rr(rules.Name(fp, 4), phase(v1alpha1.PhaseCompleted)))
	if err != nil {
		b.Fatal(err)
	}
	h := &Namer{Policy: rrPol, Lister: factsLister(facts)}
	req := createReq(rrJSON)
	b.ReportAllocs()
	for b.Loop() {
		if resp := h.Handle(context.Background(), req); !resp.Allowed {
			b.Fatal(resp.Result)
		}
	}
}

// appliedReq is a create as a server-side apply sends it: the URL name in the request, the
// applier's managed-fields entry in the object, the field manager in the options.
func appliedReq(urlName, objName, manager string) admission.Request {
	req := createReq(`{"metadata":{"name":"` + objName + `","managedFields":[{"manager":"gitops","operation":"Apply","apiVersion":"kubernaut.ai/v1alpha1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:signalFingerprint":{}}}}]},"spec":{"signalFingerprint":"` + fp + `"}}`)
	req.Name = urlName
	req.Options = runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1","fieldManager":"` + manager + `"}`)}
	return req
}

func TestNamerServerSideApply(t *testing.T) {
	h := &Namer{Policy: rrPol, Lister: staticLister(rr(rules.Name(fp, 4), phase(v1alpha1.PhaseCompleted))), Now: func() time.Time { return now }}
	tests := []struct {
		name    string
		req     admission.Request
		allowed bool
		want    string // in the denial's message
	}{
		{"the scheme's next name is admitted unchanged", appliedReq(rules.Name(fp, 5), rules.Name(fp, 5), "gitops"), true, ""},
		{"a foreign name is refused, told the next name", appliedReq("gitops-a", "gitops-a", "gitops"), false, rules.Name(fp, 5)},
		{"an old scheme name is refused", appliedReq(rules.Name(fp, 2), rules.Name(fp, 2), "gitops"), false, "kubectl create"},
		{"renamed by another webhook before rrguard", appliedReq("gitops-a", rules.Name(fp, 5), "gitops"), false, "renamed"},
		{"options unreadable: any Apply entry counts", appliedReq("gitops-a", "gitops-a", ""), false, "server-side apply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.Handle(context.Background(), tc.req)
			if len(resp.Patches) != 0 {
				t.Fatalf("an apply was patched: %+v", resp.Patches)
			}
			if resp.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v: %+v", resp.Allowed, tc.allowed, resp.Result)
			}
			if !tc.allowed && (resp.Result.Code != 422 || !strings.Contains(resp.Result.Message, tc.want)) {
				t.Fatalf("denial %+v, want 422 mentioning %q", resp.Result, tc.want)
			}
		})
	}
	// A POST that carries another manager's Apply entry (copied from an exported object) is a POST.
	post := appliedReq("", "gitops-a", "kubectl-create")
	if resp := h.Handle(context.Background(), post); !resp.Allowed || len(resp.Patches) == 0 {
		t.Fatalf("POST with a foreign Apply entry: %+v", resp)
	}
}

// Whatever mutating webhook renamed it, an apply is refused once its name is not its key.
func TestCheckerServerSideApply(t *testing.T) {
	if resp := (&Checker{Policy: rrPol}).Handle(context.Background(), appliedReq(rules.Name(fp, 2), rules.Name(fp, 2), "gitops")); !resp.Allowed {
		t.Fatalf("apply under its own scheme name denied: %+v", resp.Result)
	}
	resp := (&Checker{Policy: rrPol}).Handle(context.Background(), appliedReq("gitops-a", rules.Name(fp, 2), "gitops"))
	if resp.Allowed || resp.Result.Code != 422 || !strings.Contains(resp.Result.Message, "gitops-a") {
		t.Fatalf("renamed apply: %+v", resp.Result)
	}
	// A POST is stored under its final name, whatever it was sent with.
	post := createReq(`{"metadata":{"name":"` + rules.Name(fp, 2) + `"},"spec":{"signalFingerprint":"` + fp + `"}}`)
	post.Name = "gitops-a"
	if resp := (&Checker{Policy: rrPol}).Handle(context.Background(), post); !resp.Allowed {
		t.Fatalf("renamed POST denied: %+v", resp.Result)
	}
}

// The finalizer rides in the naming patch, whatever the object's metadata holds.
func TestNamerPatchAddsFinalizer(t *testing.T) {
	h := &Namer{Policy: rrPol, Lister: staticLister(), Finalizer: "example.com/f"}
	for _, tc := range []struct{ raw, want string }{
		{`{"spec":{"signalFingerprint":"` + fp + `"}}`,
			`[{"op":"add","path":"/metadata","value":{"finalizers":["example.com/f"],"name":"` + rules.Name(fp, 1) + `"}}]`},
		{`{"metadata":{"generateName":"rr-"},"spec":{"signalFingerprint":"` + fp + `"}}`,
			`[{"op":"add","path":"/metadata/name","value":"` + rules.Name(fp, 1) + `"},{"op":"remove","path":"/metadata/generateName"},{"op":"add","path":"/metadata/finalizers","value":["example.com/f"]}]`},
		{`{"metadata":{"name":"x","finalizers":["other"]},"spec":{"signalFingerprint":"` + fp + `"}}`,
			`[{"op":"add","path":"/metadata/name","value":"` + rules.Name(fp, 1) + `"},{"op":"add","path":"/metadata/finalizers/-","value":"example.com/f"}]`},
		{`{"metadata":{"name":"x","finalizers":["example.com/f"]},"spec":{"signalFingerprint":"` + fp + `"}}`,
			`[{"op":"add","path":"/metadata/name","value":"` + rules.Name(fp, 1) + `"}]`},
	} {
		resp := h.Handle(context.Background(), createReq(tc.raw))
		got, _ := json.Marshal(resp.Patches)
		if !resp.Allowed || string(got) != tc.want {
			t.Errorf("%s:\n patch %s\n want  %s", tc.raw, got, tc.want)
		}
	}
	// An apply keeps its name and gets the finalizer only.
	resp := h.Handle(context.Background(), appliedReq(rules.Name(fp, 1), rules.Name(fp, 1), "gitops"))
	got, _ := json.Marshal(resp.Patches)
	if want := `[{"op":"add","path":"/metadata/finalizers","value":["example.com/f"]}]`; !resp.Allowed || string(got) != want {
		t.Fatalf("apply: patch %s, want %s", got, want)
	}
}

// A typed status wrapped on its way up keeps its code and reason; only an untyped error is a 500.
func TestDenyUnwraps(t *testing.T) {
	dup := Duplicate(rrPol, "RemediationRequest", "ns", decision.Fact{Name: rules.Name(fp, 3)})
	for _, c := range []struct {
		err    error
		code   int32
		reason metav1.StatusReason
	}{
		{dup, 409, metav1.StatusReasonAlreadyExists},
		{fmt.Errorf("deciding: %w", dup), 409, metav1.StatusReasonAlreadyExists},
		{errors.New("plain"), 500, metav1.StatusReasonInternalError},
	} {
		st := deny(c.err).Result
		if st.Code != c.code || st.Reason != c.reason {
			t.Errorf("deny(%v) = %d %s, want %d %s", c.err, st.Code, st.Reason, c.code, c.reason)
		}
	}
}

// factsLister answers every read with the same facts.
type factsLister []decision.Fact

func (l factsLister) ReadKey(context.Context, string, string, string) ([]decision.Fact, error) {
	return l, nil
}

// factIndex is an Index that vouches for the facts of fixed RRs, as the RR index keeps them.
type factIndex []v1alpha1.RemediationRequest

func (x factIndex) Lookup(_, fp string, _ time.Time) ([]decision.Fact, error) {
	return factsOf(fp, x...)
}
func (factIndex) MayBeMarked(string, string) bool                        { return true }
func (factIndex) AwaitFresh(context.Context, string, time.Duration) bool { return true }

// With several RRs in flight (legacy names, so no number to rank them), a decision from the index
// and one from a consistent read name the same RR in the 409: the latest created, not the
// greatest name.
func TestIndexAndReadNameTheSameDuplicate(t *testing.T) {
	rrs := []v1alpha1.RemediationRequest{
		rr("zzz-legacy-old", createdAt(-time.Hour)),
		rr("aaa-legacy-new", createdAt(-time.Minute)),
		rr(rules.Name(fp, 2), phase(v1alpha1.PhaseCompleted)),
	}
	for name, n := range map[string]*Namer{
		"index": {Policy: rrPol, Index: factIndex(rrs), Lister: staticLister()},
		"read":  {Policy: rrPol, Lister: staticLister(rrs...)},
	} {
		resp := n.Handle(context.Background(), createReq(rrJSON))
		if resp.Allowed || resp.Result.Code != 409 || resp.Result.Details.Name != "aaa-legacy-new" {
			t.Errorf("%s: %+v, want 409 naming aaa-legacy-new", name, resp.Result)
		}
	}
}
