package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
)

// review is an AdmissionReview as the API server sends it for an RR create.
func review(op, object string) []byte {
	return []byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"0b7c5b8e-6f3a-4b5e-9a53-6b5b4f2b6d11",` +
		`"kind":{"group":"kubernaut.ai","version":"v1alpha1","kind":"RemediationRequest"},` +
		`"resource":{"group":"kubernaut.ai","version":"v1alpha1","resource":"remediationrequests"},` +
		`"requestKind":{"group":"kubernaut.ai","version":"v1alpha1","kind":"RemediationRequest"},` +
		`"requestResource":{"group":"kubernaut.ai","version":"v1alpha1","resource":"remediationrequests"},` +
		`"namespace":"kubernaut-system","operation":"` + op + `","userInfo":{"username":"system:serviceaccount:kubernaut-system:gateway"},` +
		`"object":` + object + `,"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}`)
}

const sampleObject = `{"apiVersion":"kubernaut.ai/v1alpha1","kind":"RemediationRequest","metadata":{"generateName":"rr-","namespace":"kubernaut-system","creationTimestamp":null},` +
	`"spec":{"signalFingerprint":"` + fp + `","signalName":"KubePodCrashLooping","severity":"critical","signalType":"alert",` +
	`"targetType":"kubernetes","targetResource":{"kind":"Deployment","name":"checkout","namespace":"shop"},` +
	`"firingTime":"2026-11-25T10:00:00Z","receivedTime":"2026-11-25T10:00:01Z"},"status":{}}`

// FuzzAdmissionHTTP drives both webhooks through controller-runtime's HTTP handling with arbitrary
// bodies: no panic, and every answer is a well-formed AdmissionReview whose response either
// allows or denies with a status code a client can act on.
func FuzzAdmissionHTTP(f *testing.F) {
	f.Add(review("CREATE", sampleObject))
	f.Add(review("CREATE", `{"metadata":{"name":"x"},"spec":{"signalFingerprint":"ABC"}}`))
	f.Add(review("UPDATE", sampleObject))
	f.Add(review("CREATE", `{"spec":{"signalFingerprint":7}}`))
	f.Add(review("CREATE", `null`))
	f.Add([]byte(`{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}`))
	f.Add([]byte(`not json`))
	namer := &crwebhook.Admission{Handler: &Namer{Policy: rrPol, Lister: staticLister(rr(rules.Name(fp, 1), phase(v1alpha1.PhaseCompleted)))}}
	checker := &crwebhook.Admission{Handler: &Checker{Policy: rrPol}}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, h := range []http.Handler{namer, checker} {
			req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
				t.Fatalf("answer is not JSON: %v: %q", err, w.Body.String())
			}
			r := out.Response
			if r == nil {
				t.Fatalf("no response in %q", w.Body.String())
			}
			if !r.Allowed && (r.Result == nil || r.Result.Code < 400 || r.Result.Code > 599 || r.Result.Message == "") {
				t.Fatalf("a denial without a usable status: %+v", r.Result)
			}
			if r.Allowed && r.Result != nil && r.Result.Code >= 400 {
				t.Fatalf("allowed with an error status: %+v", r.Result)
			}
		}
	})
}

// FuzzDecide: whatever the fingerprints and names, Decide either names the RR by the scheme or
// refuses it with 409 or 422, and never panics.
func FuzzDecide(f *testing.F) {
	f.Add(fp, "rr-3f79bb7b435b05321651daefd374cdc6-1", "Completed", "rr-3f79bb7b435b05321651daefd374cdc6-2", "")
	f.Add(strings.ToUpper(fp), "legacy", "", "", "Blocked")
	f.Add(fp, "rr-3f79bb7b435b05321651daefd374cdc6-9223372036854775807", "Failed", "x", "Weird")
	f.Fuzz(func(t *testing.T, fingerprint, name1, phase1, name2, phase2 string) {
		existing := []v1alpha1.RemediationRequest{
			{ObjectMeta: metav1.ObjectMeta{Name: name1}, Spec: v1alpha1.RemediationRequestSpec{SignalFingerprint: fingerprint},
				Status: v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.Phase(phase1)}},
			{ObjectMeta: metav1.ObjectMeta{Name: name2}, Spec: v1alpha1.RemediationRequestSpec{SignalFingerprint: fingerprint},
				Status: v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.Phase(phase2)}},
		}
		newRR := &v1alpha1.RemediationRequest{Spec: v1alpha1.RemediationRequestSpec{SignalFingerprint: fingerprint}}
		name, err := Decide(newRR, existing, 0, now)
		if err == nil {
			if _, ok := rules.Occurrence(fingerprint, name); !ok || len(name) > 63 {
				t.Fatalf("Decide named %q for %q", name, fingerprint)
			}
			return
		}
		st, ok := err.(*apierrors.StatusError)
		if !ok || (st.ErrStatus.Code != 409 && st.ErrStatus.Code != 422) {
			t.Fatalf("Decide failed with %T %v", err, err)
		}
	})
}
