package webhook

import (
	"context"
	"encoding/json"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/policy"
	"github.com/rrguard/rrguard/webhook/decision"
)

// rrPol is the RR policy rrguard ships, which every handler test enforces.
var rrPol = func() *policy.Compiled {
	c, err := policy.RemediationRequests()
	if err != nil {
		panic(err)
	}
	return c
}()

// factsOf judges typed RRs as the index and a consistent read do, keeping those of key keyHex.
func factsOf(keyHex string, rrs ...v1alpha1.RemediationRequest) []decision.Fact {
	ctx := context.Background()
	var out []decision.Fact
	for i := range rrs {
		b, _ := json.Marshal(&rrs[i])
		var m map[string]any
		_ = utiljson.Unmarshal(b, &m)
		kh, _, err := rrPol.Key(ctx, m)
		if err != nil || kh != keyHex {
			continue
		}
		f, _ := rrPol.Fact(ctx, m, rrs[i].Name, kh, rrs[i].CreationTimestamp.Time, rrs[i].DeletionTimestamp != nil)
		out = append(out, f)
	}
	return out
}

// Decide is a create of rr decided from existing RRs (read consistently) and a mark, through the
// handler's own decode and decision.
func Decide(rr *v1alpha1.RemediationRequest, existing []v1alpha1.RemediationRequest, mark int64, now time.Time) (string, error) {
	b, _ := json.Marshal(rr)
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Resource: rrResource, Namespace: "kubernaut-system",
		Kind:   metav1.GroupVersionKind{Group: "kubernaut.ai", Version: "v1alpha1", Kind: "RemediationRequest"},
		Object: runtime.RawExtension{Raw: b},
	}}
	c, _, err := decodeCreate(context.Background(), req, rrPol, rrPol.Reads().Merge(createReads))
	if err != nil {
		return "", err
	}
	return decideFacts(rrPol, c, factsOf(c.keyHex, existing...), mark, now)
}
