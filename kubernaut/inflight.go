// Package kubernaut is Kubernaut's RemediationRequest as rrguard's RR tooling (creator, audit,
// rrstorm, the tests' Gateway) sees it: the in-flight rule in Go, equal to the RR policy's CEL
// (config/policies; policy.TestRRPolicyAgreesWithTheRules checks the two on 2,000 random RRs). The
// engine judges RRs through that policy only and imports nothing here.
package kubernaut

import (
	"time"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
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

// Status is all the in-flight rule reads of an RR, so that a store of decision facts (package
// rrfacts) can apply the rule without keeping the RR.
type Status struct {
	Phase        v1alpha1.Phase
	ManualReview bool      // completionStatus.outcome is ManualReviewRequired
	NextAllowed  time.Time // routingStatus.nextAllowedExecution; zero when unset
	Deleting     bool      // deletionTimestamp set
}

// StatusOf reads the in-flight rule's inputs from rr.
func StatusOf(rr *v1alpha1.RemediationRequest) Status {
	s := Status{Phase: rr.Status.OverallPhase, Deleting: rr.DeletionTimestamp != nil}
	if cs := rr.Status.CompletionStatus; cs != nil {
		s.ManualReview = cs.Outcome == v1alpha1.OutcomeManualReviewRequired
	}
	if rs := rr.Status.RoutingStatus; rs != nil && rs.NextAllowedExecution != nil {
		s.NextAllowed = rs.NextAllowedExecution.Time
	}
	return s
}

// Until is the in-flight rule: the instant up to which an RR in this state blocks a new RR of
// its fingerprint (decision.Forever while Kubernaut still works on it, the zero time once it
// does not). It depends on the RR alone, not on the clock, so the index keeps one instant per RR.
func (s Status) Until() time.Time {
	switch {
	case s.Deleting:
		return time.Time{}
	case !terminal[s.Phase], s.ManualReview:
		return decision.Forever
	default:
		return s.NextAllowed // zero when unset: not in flight
	}
}

// InFlight reports whether an RR in this state blocks a new RR of its fingerprint at now.
func (s Status) InFlight(now time.Time) bool { return now.Before(s.Until()) }

// InFlight applies the in-flight rule to rr.
func InFlight(rr *v1alpha1.RemediationRequest, now time.Time) bool {
	return StatusOf(rr).InFlight(now)
}
