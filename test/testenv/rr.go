package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// Fingerprint derives a valid fingerprint from any text, as Kubernaut does from a resource key.
func Fingerprint(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

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
