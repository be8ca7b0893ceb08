package serve

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
)

// Check makes a dry-run RR create through the API server, as an RR creator would, with a fresh
// random fingerprint, and returns the name rrguard gave it. Nothing is stored: dry runs reach the
// webhooks (they declare sideEffects None) but not etcd. An error means rrguard is not in the path,
// or did not answer.
func Check(ctx context.Context, c client.Client, namespace string) (string, error) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	fp := hex.EncodeToString(b)
	now := metav1.Now()
	rr := &v1alpha1.RemediationRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, GenerateName: "rrguard-check-"},
		Spec: v1alpha1.RemediationRequestSpec{
			SignalFingerprint: fp, SignalName: "RRGuardInstallCheck", Severity: "info", SignalType: "alert",
			TargetType: "kubernetes", TargetResource: v1alpha1.ResourceIdentifier{Kind: "Namespace", Name: namespace},
			FiringTime: now, ReceivedTime: now,
		},
	}
	if err := c.Create(ctx, rr, client.DryRunAll); err != nil {
		return "", fmt.Errorf("the dry-run create was refused: %w", err)
	}
	if _, ok := rules.Occurrence(fp, rr.Name); !ok {
		return "", fmt.Errorf("the API server accepted the RR as %q without rrguard naming it: is the MutatingWebhookConfiguration installed?", rr.Name)
	}
	return rr.Name, nil
}
