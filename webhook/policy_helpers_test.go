package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/policy"
)

// rrPol is the RR policy rrguard ships, which every handler test enforces.
var rrPol = func() *policy.Compiled {
	c, err := policy.RemediationRequests()
	if err != nil {
		panic(err)
	}
	return c
}()

// factsOf judges typed RRs as the index and a consistent read do, keeping those of key keyHex;
// an RR the policy cannot judge (its in-flight rule fails on it) is an error, not a silent
// "in flight".
func factsOf(keyHex string, rrs ...v1alpha1.RemediationRequest) ([]decision.Fact, error) {
	ctx := context.Background()
	var out []decision.Fact
	for i := range rrs {
		b, err := json.Marshal(&rrs[i])
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := utiljson.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		kh, _, err := rrPol.Key(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("RR %s: %w", rrs[i].Name, err)
		}
		if kh != keyHex {
			continue
		}
		f, err := rrPol.Fact(ctx, m, rrs[i].Name, kh, rrs[i].CreationTimestamp.Time, rrs[i].DeletionTimestamp != nil)
		if err != nil {
			return nil, fmt.Errorf("RR %s: %w", rrs[i].Name, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// Decide is a create of rr decided from existing RRs (read consistently) and a mark, through the
// handler's own decode and decision.
func Decide(rr *v1alpha1.RemediationRequest, existing []v1alpha1.RemediationRequest, mark int64, now time.Time) (string, error) {
	b, err := json.Marshal(rr)
	if err != nil {
		return "", err
	}
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: admissionv1.Create, Resource: rrResource, Namespace: "kubernaut-system",
		Kind:   metav1.GroupVersionKind{Group: "kubernaut.ai", Version: "v1alpha1", Kind: "RemediationRequest"},
		Object: runtime.RawExtension{Raw: b},
	}}
	c, _, err := decodeCreate(context.Background(), req, rrPol, rrPol.Reads().Merge(createReads))
	if err != nil {
		return "", err
	}
	facts, err := factsOf(c.keyHex, existing...)
	if err != nil {
		return "", err
	}
	return decideFacts(rrPol, c, facts, mark, now)
}
