package rules

import (
	"time"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// terminal lists the phases after which Kubernaut does no more work on an RR. Every other
// value, empty and unknown ones included, is in flight: an unknown phase from a newer Kubernaut
// must err on the side of refusing a second remediation. Blocked is not terminal on purpose.
var terminal = map[v1alpha1.Phase]bool{
	v1alpha1.PhaseCompleted: true,
	v1alpha1.PhaseFailed:    true,
	v1alpha1.PhaseTimedOut:  true,
	v1alpha1.PhaseSkipped:   true,
	v1alpha1.PhaseCancelled: true,
}

// InFlight is the in-flight rule: whether rr blocks a new RR of its fingerprint at time now.
func InFlight(rr *v1alpha1.RemediationRequest, now time.Time) bool {
	if rr.DeletionTimestamp != nil {
		return false
	}
	st := rr.Status
	if !terminal[st.OverallPhase] {
		return true
	}
	if st.CompletionStatus != nil && st.CompletionStatus.Outcome == v1alpha1.OutcomeManualReviewRequired {
		return true
	}
	if st.RoutingStatus != nil && st.RoutingStatus.NextAllowedExecution != nil &&
		st.RoutingStatus.NextAllowedExecution.After(now) {
		return true
	}
	return false
}
