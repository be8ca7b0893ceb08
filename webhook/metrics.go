package webhook

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rrguard/rrguard/internal/policy"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Decisions, as counted by rrguard_admission_decisions_total.
const (
	DecisionCreated   = "created"
	DecisionDuplicate = "duplicate"
	DecisionInvalid   = "invalid"
	DecisionError     = "error"
	DecisionAllowed   = "allowed" // the validating webhook's pass
	DecisionHeld      = "held"    // stored held by a Queue or Replace policy
)

// policyOf is the policy label of a request to a handler with policy p (none: misconfigured).
func policyOf(p *policy.Compiled) string {
	if p == nil {
		return ""
	}
	return p.Policy
}

// Webhook labels.
const (
	webhookName  = "name"
	webhookCheck = "check"
)

// controller-runtime's own webhook metrics count a denial as HTTP 200 and bucket latency in
// powers of ten; these say what was decided, with buckets fine enough for a p99.
var (
	decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_admission_decisions_total",
		Help: "Admission decisions on the creates a policy judges, by webhook, decision and policy.",
	}, []string{"webhook", "decision", "policy"})

	duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rrguard_admission_duration_seconds",
		Help:    "Time to answer one admission request, by webhook and policy.",
		Buckets: prometheus.ExponentialBucketsRange(0.0005, 10, 16),
	}, []string{"webhook", "policy"})

	readDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "rrguard_api_read_duration_seconds",
		Help:    "Time of the consistent read that lists a key's objects.",
		Buckets: prometheus.ExponentialBucketsRange(0.0005, 10, 16),
	})
)

func init() {
	metrics.Registry.MustRegister(decisions, duration, readDuration)
}

var (
	decisionReads = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "rrguard_decision_api_reads",
		Help:    "API reads one naming decision made: 0 for a repeat while in flight, 1 (the mark) for a new fingerprint, 2 otherwise.",
		Buckets: []float64{0, 1, 2, 3},
	})
	fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_consistent_list_fallbacks_total",
		Help: "Decisions taken from consistent reads because the RR index could not vouch for itself, by reason.",
	}, []string{"reason"})
)

// keyless counts the creates a policy left alone because they have no key (policy.IsKeyAbsent):
// a policy that matches more than its author meant shows here, not as refusals.
var keyless = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "rrguard_policy_keyless_creates_total",
	Help: "Creates a policy left alone, unchanged, because the object has no key (a label or field its key reads is absent), by policy.",
}, []string{"policy"})

func init() { metrics.Registry.MustRegister(decisionReads, fallbacks, keyless) }
