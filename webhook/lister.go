package webhook

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// FingerprintField is the selectable field Kubernaut's CRD declares on the fingerprint.
const FingerprintField = "spec.signalFingerprint"

// ErrNoSelectableFingerprint says the API server refuses a field selector on the fingerprint: the
// RR CRD does not declare it selectable (Kubernaut's does; selectable fields are GA in 1.32).
var ErrNoSelectableFingerprint = errors.New("the RemediationRequest CRD does not declare spec.signalFingerprint selectable")

// ProbeSelectableFingerprint asks the API server for RRs by the fingerprint's field selector,
// once: nil when it serves it, ErrNoSelectableFingerprint when it refuses the selector, any other
// error as it came (the CRD not installed, no access).
func ProbeSelectableFingerprint(ctx context.Context, r client.Reader, namespace string) error {
	var list v1alpha1.RemediationRequestList
	err := r.List(ctx, &list, client.InNamespace(namespace), client.Limit(1),
		client.MatchingFields{FingerprintField: "0000000000000000000000000000000000000000000000000000000000000000"})
	if apierrors.IsBadRequest(err) {
		return fmt.Errorf("%w (%v)", ErrNoSelectableFingerprint, err)
	}
	return err
}
