package webhook

import (
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
	"github.com/rrguard/rrguard/webhook/decision"
)

var (
	groupResource   = schema.GroupResource{Group: v1alpha1.GroupVersion.Group, Resource: "remediationrequests"}
	groupKind       = schema.GroupKind{Group: v1alpha1.GroupVersion.Group, Kind: "RemediationRequest"}
	fingerprintPath = field.NewPath("spec", "signalFingerprint")
)

// Decide names a new RR or refuses it. existing holds the RRs of the namespace that carry the
// new RR's fingerprint, read consistently; RRs of other fingerprints are ignored. mark is the
// fingerprint's high-water mark (package marks): the highest number of a deleted RR, read after
// existing. The error is always an *apierrors.StatusError: Invalid (422) for a bad fingerprint or
// exhausted numbers, AlreadyExists (409) naming the RR in flight for a duplicate.
func Decide(rr *v1alpha1.RemediationRequest, existing []v1alpha1.RemediationRequest, mark int64, now time.Time) (string, error) {
	fp := rr.Spec.SignalFingerprint
	facts := make([]decision.Fact, 0, len(existing))
	for i := range existing {
		if existing[i].Spec.SignalFingerprint == fp {
			facts = append(facts, FactOf(fp, &existing[i]))
		}
	}
	return decideFacts(rr, facts, mark, now)
}

// FactOf is what a decision reads of an RR of fingerprint fp, as the index keeps it.
func FactOf(fp string, rr *v1alpha1.RemediationRequest) decision.Fact {
	n, _ := rules.Occurrence(fp, rr.Name)
	return decision.Fact{Name: rr.Name, N: n, Until: rules.StatusOf(rr).Until(),
		Phase: string(rr.Status.OverallPhase), Created: rr.CreationTimestamp.Time}
}

// decideFacts is Decide from facts, whichever source (index or read) they came from.
func decideFacts(rr *v1alpha1.RemediationRequest, facts []decision.Fact, mark int64, now time.Time) (string, error) {
	if err := ValidateFingerprint(rr); err != nil {
		return "", err
	}
	out, err := decision.Decide(facts, mark, now)
	switch {
	case errors.Is(err, decision.ErrExhausted):
		return "", apierrors.NewInvalid(groupKind, rr.Name, field.ErrorList{
			field.Invalid(fingerprintPath, rr.Spec.SignalFingerprint, "occurrence numbers of this fingerprint are exhausted"),
		})
	case err != nil:
		return "", err
	case out.Duplicate != nil:
		return "", Duplicate(rr.Namespace, *out.Duplicate)
	}
	return rules.Name(rr.Spec.SignalFingerprint, out.Next), nil
}

// ValidateFingerprint refuses an RR whose fingerprint the naming rule cannot use.
func ValidateFingerprint(rr *v1alpha1.RemediationRequest) error {
	fp := rr.Spec.SignalFingerprint
	switch {
	case fp == "":
		return apierrors.NewInvalid(groupKind, rr.Name, field.ErrorList{field.Required(fingerprintPath, "")})
	case !rules.ValidFingerprint(fp):
		return apierrors.NewInvalid(groupKind, rr.Name, field.ErrorList{
			field.Invalid(fingerprintPath, fp, "must be 64 lowercase hex characters (a SHA-256)"),
		})
	}
	return nil
}

// Duplicate is the answer to a create while inflight is in flight: the same status the API server
// gives for a name collision (409 AlreadyExists, details naming the RR), so a creator handles both
// paths with apierrors.IsAlreadyExists and reads the RR's name from the details.
func Duplicate(namespace string, inflight decision.Fact) *apierrors.StatusError {
	phase := inflight.Phase
	if phase == "" {
		phase = "new"
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure,
		Code:   409,
		Reason: metav1.StatusReasonAlreadyExists,
		Details: &metav1.StatusDetails{
			Group: groupResource.Group,
			Kind:  groupResource.Resource,
			Name:  inflight.Name,
		},
		Message: fmt.Sprintf("a remediation of this signal is already in flight: RemediationRequest %s/%s (phase %s); record the repeat on it instead of creating another",
			namespace, inflight.Name, phase),
	}}
}
