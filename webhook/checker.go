package webhook

import (
	"context"
	"time"

	"github.com/rrguard/rrguard/rules"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Checker is the validating webhook: after every mutating webhook has run (one may have renamed
// the RR after rrguard did), the stored name must still be the scheme's, or uniqueness is lost.
// It needs no API read.
type Checker struct{}

var _ admission.Handler = Checker{}

// Handle implements admission.Handler.
func (Checker) Handle(_ context.Context, req admission.Request) admission.Response {
	start := time.Now()
	defer func() { duration.WithLabelValues(webhookCheck).Observe(time.Since(start).Seconds()) }()

	rr, skip, err := decodeCreate(req)
	if skip {
		return admission.Allowed("not a create")
	}
	if err == nil {
		err = ValidateFingerprint(rr)
	}
	if err == nil {
		err = checkStoredUnder(req, rr, appliedCreate(req, rr))
	}
	if err == nil {
		if _, ok := rules.Occurrence(rr.Spec.SignalFingerprint, rr.Name); !ok {
			err = apierrors.NewInvalid(groupKind, rr.Name, field.ErrorList{field.Invalid(
				namePath, rr.Name,
				"must be rr-<first 32 characters of spec.signalFingerprint>-<n>, as rrguard's mutating webhook sets it; another mutating webhook may have changed it")})
		}
	}
	if err != nil {
		decisions.WithLabelValues(webhookCheck, decisionOf(err)).Inc()
		return deny(err)
	}
	decisions.WithLabelValues(webhookCheck, DecisionAllowed).Inc()
	return admission.Allowed("")
}
