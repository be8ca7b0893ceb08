// Package cluster is Kubernaut's RR against a cluster, for the RR tooling: a client scheme that
// knows the RR, and the install check (a dry-run RR create). The engine imports nothing here.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/webhook/serve"
)

// Scheme is rrguard's scheme and Kubernaut's RemediationRequest, for the RR tooling's clients.
func Scheme() *runtime.Scheme {
	s := serve.Scheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err) // static registration; cannot fail at run time
	}
	return s
}

// Check makes a dry-run RR create through the API server, as an RR creator would, with a fresh
// random fingerprint, and returns the name rrguard gave it (serve.Check).
func Check(ctx context.Context, c client.Client, namespace string) (string, error) {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail
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
	name, err := serve.Check(ctx, c, rr, rules.RRNamePrefix)
	if err != nil {
		return "", err
	}
	if _, ok := rules.Occurrence(fp, name); !ok {
		return "", fmt.Errorf("the API server stored the RR as %q, not a name of its fingerprint: is another mutation renaming RRs?", name)
	}
	return name, nil
}
