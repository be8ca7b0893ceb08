package webhook

import (
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
)

const (
	fp      = "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea"
	otherFP = "0000000000000000000000000000000000000000000000000000000000000001"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type rrOpt func(*v1alpha1.RemediationRequest)

func rr(name string, opts ...rrOpt) v1alpha1.RemediationRequest {
	r := v1alpha1.RemediationRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kubernaut-system"},
		Spec:       v1alpha1.RemediationRequestSpec{SignalFingerprint: fp},
	}
	for _, o := range opts {
		o(&r)
	}
	return r
}

func phase(p v1alpha1.Phase) rrOpt {
	return func(r *v1alpha1.RemediationRequest) { r.Status.OverallPhase = p }
}
func outcome(o v1alpha1.Outcome) rrOpt {
	return func(r *v1alpha1.RemediationRequest) {
		r.Status.CompletionStatus = &v1alpha1.CompletionStatus{Outcome: o}
	}
}
func nextAllowed(d time.Duration) rrOpt {
	return func(r *v1alpha1.RemediationRequest) {
		r.Status.RoutingStatus = &v1alpha1.RoutingStatus{NextAllowedExecution: &metav1.Time{Time: now.Add(d)}}
	}
}
func deleting() rrOpt {
	return func(r *v1alpha1.RemediationRequest) { r.DeletionTimestamp = &metav1.Time{Time: now} }
}
func createdAt(d time.Duration) rrOpt {
	return func(r *v1alpha1.RemediationRequest) { r.CreationTimestamp = metav1.Time{Time: now.Add(d)} }
}
func fingerprint(f string) rrOpt {
	return func(r *v1alpha1.RemediationRequest) { r.Spec.SignalFingerprint = f }
}

func TestDecide(t *testing.T) {
	n := func(i int64) string { return rules.Name(fp, i) }
	tests := []struct {
		name     string
		newFP    string
		existing []v1alpha1.RemediationRequest
		mark     int64  // the fingerprint's high-water mark
		wantName string // the name given, when allowed
		wantDup  string // the RR named in the 409, when refused
		invalid  bool
	}{
		{name: "first of its fingerprint", wantName: n(1)},
		{name: "other fingerprints are ignored", existing: []v1alpha1.RemediationRequest{rr(n(1), fingerprint(otherFP))}, wantName: n(1)},
		{name: "new RR (empty phase) in flight", existing: []v1alpha1.RemediationRequest{rr(n(1))}, wantDup: n(1)},
		{name: "Pending", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhasePending))}, wantDup: n(1)},
		{name: "Processing", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseProcessing))}, wantDup: n(1)},
		{name: "Analyzing", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseAnalyzing))}, wantDup: n(1)},
		{name: "AwaitingApproval", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseAwaitingApproval))}, wantDup: n(1)},
		{name: "Executing", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseExecuting))}, wantDup: n(1)},
		{name: "Verifying", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseVerifying))}, wantDup: n(1)},
		{name: "Blocked is not terminal", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseBlocked))}, wantDup: n(1)},
		{name: "unknown phase is not terminal", existing: []v1alpha1.RemediationRequest{rr(n(1), phase("Reticulating"))}, wantDup: n(1)},
		{name: "Completed", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseCompleted))}, wantName: n(2)},
		{name: "Failed", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseFailed))}, wantName: n(2)},
		{name: "TimedOut", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseTimedOut))}, wantName: n(2)},
		{name: "Skipped", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseSkipped))}, wantName: n(2)},
		{name: "Cancelled", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseCancelled))}, wantName: n(2)},
		{name: "terminal but ManualReviewRequired", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseCompleted), outcome(v1alpha1.OutcomeManualReviewRequired))}, wantDup: n(1)},
		{name: "terminal, other outcome", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseCompleted), outcome(v1alpha1.OutcomeRemediated))}, wantName: n(2)},
		{name: "terminal, backoff in the future", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseFailed), nextAllowed(time.Minute))}, wantDup: n(1)},
		{name: "terminal, backoff passed", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseFailed), nextAllowed(-time.Minute))}, wantName: n(2)},
		{name: "terminal, backoff exactly now", existing: []v1alpha1.RemediationRequest{rr(n(1), phase(v1alpha1.PhaseFailed), nextAllowed(0))}, wantName: n(2)},
		{name: "in flight but being deleted", existing: []v1alpha1.RemediationRequest{rr(n(1), deleting())}, wantName: n(2)},
		{name: "numbering follows the newest", existing: []v1alpha1.RemediationRequest{
			rr(n(7), phase(v1alpha1.PhaseCompleted)), rr(n(3), phase(v1alpha1.PhaseFailed)),
		}, wantName: n(8)},
		{name: "gaps left by retention are not refilled", existing: []v1alpha1.RemediationRequest{rr(n(41), phase(v1alpha1.PhaseCompleted))}, wantName: n(42)},
		{name: "legacy in-flight RR refuses", existing: []v1alpha1.RemediationRequest{rr("rr-3f79bb7b435b-1a2b3c4d")}, wantDup: "rr-3f79bb7b435b-1a2b3c4d"},
		{name: "legacy terminal RR does not number", existing: []v1alpha1.RemediationRequest{rr("rr-3f79bb7b435b-1a2b3c4d", phase(v1alpha1.PhaseCompleted))}, wantName: n(1)},
		{name: "non-canonical number is legacy", existing: []v1alpha1.RemediationRequest{rr(rules.Name(fp, 1)+"0", phase(v1alpha1.PhaseCompleted)), rr("rr-"+fp[:32]+"-07", phase(v1alpha1.PhaseCompleted))}, wantName: n(11)},
		{name: "several in flight: the newest is named", existing: []v1alpha1.RemediationRequest{
			rr("legacy-old", createdAt(-time.Hour)), rr(n(2), phase(v1alpha1.PhaseBlocked)), rr(n(1), phase(v1alpha1.PhaseCompleted)),
		}, wantDup: n(2)},
		{name: "several legacy in flight: the most recent", existing: []v1alpha1.RemediationRequest{
			rr("legacy-a", createdAt(-time.Hour)), rr("legacy-b", createdAt(-time.Minute)),
		}, wantDup: "legacy-b"},
		{name: "a mark above every existing RR numbers the next", mark: 9, existing: []v1alpha1.RemediationRequest{rr(n(4), phase(v1alpha1.PhaseCompleted))}, wantName: n(10)},
		{name: "a mark with no RR left: names never go back", mark: 5, wantName: n(6)},
		{name: "an existing RR above the mark numbers the next", mark: 3, existing: []v1alpha1.RemediationRequest{rr(n(7), phase(v1alpha1.PhaseCompleted))}, wantName: n(8)},
		{name: "a mark does not admit a second RR in flight", mark: 9, existing: []v1alpha1.RemediationRequest{rr(n(2))}, wantDup: n(2)},
		{name: "empty fingerprint", newFP: "-", invalid: true},
		{name: "63 characters", newFP: fp[:63], invalid: true},
		{name: "uppercase", newFP: strings.ToUpper(fp), invalid: true},
		{name: "non-hex", newFP: "z" + fp[1:], invalid: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			newRR := rr("")
			switch tc.newFP {
			case "":
			case "-":
				newRR.Spec.SignalFingerprint = ""
			default:
				newRR.Spec.SignalFingerprint = tc.newFP
			}
			name, err := Decide(&newRR, tc.existing, tc.mark, now)
			switch {
			case tc.invalid:
				if !apierrors.IsInvalid(err) {
					t.Fatalf("got %q, %v; want Invalid", name, err)
				}
				causes := err.(*apierrors.StatusError).ErrStatus.Details.Causes
				if len(causes) != 1 || causes[0].Field != "spec.signalFingerprint" {
					t.Fatalf("causes = %+v, want one on spec.signalFingerprint", causes)
				}
			case tc.wantDup != "":
				if !apierrors.IsAlreadyExists(err) {
					t.Fatalf("got %q, %v; want AlreadyExists", name, err)
				}
				st := err.(*apierrors.StatusError).ErrStatus
				if st.Code != 409 || st.Details.Name != tc.wantDup || st.Details.Group != "kubernaut.ai" ||
					st.Details.Kind != "remediationrequests" || !strings.Contains(st.Message, tc.wantDup) {
					t.Fatalf("status = %+v, want 409 naming %s", st, tc.wantDup)
				}
			default:
				if err != nil || name != tc.wantName {
					t.Fatalf("got %q, %v; want %q", name, err, tc.wantName)
				}
			}
		})
	}
}

func TestNameFitsAndParses(t *testing.T) {
	for _, n := range []int64{1, 9, 10, 1 << 40, 1<<63 - 1} {
		name := rules.Name(fp, n)
		if len(name) > 63 {
			t.Errorf("%s is %d characters", name, len(name))
		}
		if got, ok := rules.Occurrence(fp, name); !ok || got != n {
			t.Errorf("rules.Occurrence(%s) = %d, %v", name, got, ok)
		}
		if _, ok := rules.Occurrence(otherFP, name); ok {
			t.Errorf("%s parsed as a name of another fingerprint", name)
		}
	}
	for _, bad := range []string{"", "rr-", "rr-" + fp[:32] + "-", "rr-" + fp[:32] + "-0", "rr-" + fp[:32] + "--1",
		"rr-" + fp[:32] + "-01", "rr-" + fp[:32] + "-1x", "rr-" + fp[:32] + "-99999999999999999999", "xx-" + fp[:32] + "-1", "rr-" + fp[:32] + "-+1"} {
		if n, ok := rules.Occurrence(fp, bad); ok {
			t.Errorf("rules.Occurrence(%q) = %d, want not a scheme name", bad, n)
		}
	}
}

func TestOccurrenceExhausted(t *testing.T) {
	newRR := rr("")
	_, err := Decide(&newRR, []v1alpha1.RemediationRequest{rr(rules.Name(fp, 1<<63-1), phase(v1alpha1.PhaseCompleted))}, 0, now)
	if !apierrors.IsInvalid(err) {
		t.Fatalf("exhausted by an RR: %v", err)
	}
	_, err = Decide(&newRR, nil, 1<<63-1, now)
	if !apierrors.IsInvalid(err) {
		t.Fatalf("got %v, want Invalid", err)
	}
}

func BenchmarkDecide(b *testing.B) {
	existing := []v1alpha1.RemediationRequest{
		rr(rules.Name(fp, 1), phase(v1alpha1.PhaseCompleted)), rr(rules.Name(fp, 2), phase(v1alpha1.PhaseFailed)),
		rr(rules.Name(fp, 3), phase(v1alpha1.PhaseCompleted), nextAllowed(-time.Hour)),
	}
	newRR := rr("")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decide(&newRR, existing, 0, now); err != nil {
			b.Fatal(err)
		}
	}
}
