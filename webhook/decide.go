package webhook

import (
	"fmt"
	"math"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
)

var (
	groupResource   = schema.GroupResource{Group: v1alpha1.GroupVersion.Group, Resource: "remediationrequests"}
	groupKind       = schema.GroupKind{Group: v1alpha1.GroupVersion.Group, Kind: "RemediationRequest"}
	fingerprintPath = field.NewPath("spec", "signalFingerprint")
)

// Decide names a new RR or refuses it. existing holds the RRs of the namespace that carry the
// new RR's fingerprint, read consistently; RRs of other fingerprints are ignored. mark is the
// fingerprint's high-water mark (package marks): the highest number of a deleted RR, read after
// existing. The new number is 1 + max(highest number among existing, mark), so a name is never
// issued twice. The error is always an *apierrors.StatusError: Invalid (422) for a bad
// fingerprint, AlreadyExists (409) naming the RR in flight for a duplicate.
func Decide(rr *v1alpha1.RemediationRequest, existing []v1alpha1.RemediationRequest, mark int64, now time.Time) (string, error) {
	fp := rr.Spec.SignalFingerprint
	if err := ValidateFingerprint(rr); err != nil {
		return "", err
	}
	var newest int64
	var blocking []*v1alpha1.RemediationRequest
	for i := range existing {
		e := &existing[i]
		if e.Spec.SignalFingerprint != fp {
			continue
		}
		// A terminating RR still holds its name, so it still counts for numbering.
		if n, ok := rules.Occurrence(fp, e.Name); ok && n > newest {
			newest = n
		}
		if rules.InFlight(e, now) {
			blocking = append(blocking, e)
		}
	}
	if len(blocking) > 0 {
		return "", Duplicate(rr.Namespace, newestOf(fp, blocking))
	}
	newest = max(newest, mark)
	if newest == math.MaxInt64 {
		return "", apierrors.NewInvalid(groupKind, rr.Name, field.ErrorList{
			field.Invalid(fingerprintPath, fp, "occurrence numbers of this fingerprint are exhausted"),
		})
	}
	return rules.Name(fp, newest+1), nil
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

// newestOf picks the RR a creator should record its repeat on when several are in flight (only
// legacy RRs or an orchestrator reopening an old RR can make more than one): the most recent.
func newestOf(fp string, rrs []*v1alpha1.RemediationRequest) *v1alpha1.RemediationRequest {
	sort.Slice(rrs, func(i, j int) bool {
		ni, _ := rules.Occurrence(fp, rrs[i].Name)
		nj, _ := rules.Occurrence(fp, rrs[j].Name)
		if ni != nj {
			return ni > nj
		}
		ti, tj := rrs[i].CreationTimestamp, rrs[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return tj.Before(&ti)
		}
		return rrs[i].Name > rrs[j].Name
	})
	return rrs[0]
}

// Duplicate is the answer to a create while inflight is in flight: the same status the API server
// gives for a name collision (409 AlreadyExists, details naming the RR), so a creator handles both
// paths with apierrors.IsAlreadyExists and reads the RR's name from the details.
func Duplicate(namespace string, inflight *v1alpha1.RemediationRequest) *apierrors.StatusError {
	phase := string(inflight.Status.OverallPhase)
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
