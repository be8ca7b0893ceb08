package testenv

import (
	"context"
	"strconv"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// Fill creates RRs from..to of distinct fingerprints in ns, named as Kubernaut names them. With
// kubernautSize, each carries the bulk of a real Kubernaut RR: a 2 KB payload and, after a status
// write, a completed status with 100 more fields (kept by the CRD under completionStatus, which
// preserves unknown fields) and a condition.
func Fill(ctx context.Context, c client.Client, ns string, from, to int, kubernautSize bool) error {
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fp := Fingerprint(ns + "/fill/" + strconv.Itoa(i))
				rr := NewRR(ns, fp)
				rr.GenerateName, rr.Name = "", "rr-"+fp[:12]+"-"+fp[40:48]
				if kubernautSize {
					rr.Spec.OriginalPayload = strings.Repeat("p", 2048)
					rr.Spec.SignalLabels = map[string]string{"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "checkout-" + fp[:8]}
				}
				err := c.Create(ctx, rr)
				if err == nil && kubernautSize {
					err = c.Status().Update(ctx, withKubernautStatus(rr))
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func withKubernautStatus(rr *v1alpha1.RemediationRequest) *v1alpha1.RemediationRequest {
	now := metav1.Now()
	rr.Status = v1alpha1.RemediationRequestStatus{
		OverallPhase: v1alpha1.PhaseCompleted, Message: strings.Repeat("m", 200), StartTime: &now, CompletedAt: &now,
		Deduplication:    &v1alpha1.DeduplicationStatus{FirstSeenAt: &now, LastSeenAt: &now, OccurrenceCount: 3},
		CompletionStatus: &v1alpha1.CompletionStatus{Outcome: v1alpha1.OutcomeRemediated},
		Conditions: []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Done",
			Message: strings.Repeat("c", 200), LastTransitionTime: now}},
	}
	return rr
}
