package localcp

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
)

// Fingerprint derives a valid fingerprint from any text, as Kubernaut does from a resource key.
func Fingerprint(key string) string { return rules.HashKey(key) }

// NewRR is a schema-valid RR for fingerprint fp in namespace ns, named by generateName as
// Kubernaut's Gateway would leave it to rrguard.
func NewRR(ns, fp string) *v1alpha1.RemediationRequest {
	now := metav1.NewTime(time.Now().UTC().Truncate(time.Second))
	return &v1alpha1.RemediationRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "rr-"},
		Spec: v1alpha1.RemediationRequestSpec{
			SignalFingerprint: fp,
			SignalName:        "KubePodCrashLooping",
			Severity:          "critical",
			SignalType:        "alert",
			SignalSource:      "prometheus",
			TargetType:        "kubernetes",
			TargetResource:    v1alpha1.ResourceIdentifier{Kind: "Deployment", Name: "checkout", Namespace: "shop"},
			FiringTime:        now,
			ReceivedTime:      now,
		},
	}
}

// WaitFinishedJudged waits until rrguard no longer refuses a new RR of rr's fingerprint as a
// duplicate of rr, asked with dry-run creates (nothing stored): a replica deciding from its RR
// index refuses until the index has seen rr finish, as the contract allows.
func WaitFinishedJudged(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		last = c.Create(ctx, NewRR(rr.Namespace, rr.Spec.SignalFingerprint), client.DryRunAll)
		var st apierrors.APIStatus
		if apierrors.IsAlreadyExists(last) && errors.As(last, &st) && st.Status().Details != nil && st.Status().Details.Name == rr.Name {
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("rrguard still refuses creates as duplicates of %s: %w (last: %v)", rr.Name, err, last)
	}
	return nil
}
