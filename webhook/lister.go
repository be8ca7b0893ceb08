package webhook

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// FingerprintField is the selectable field the CRD declares on the fingerprint.
const FingerprintField = "spec.signalFingerprint"

// Lister returns the RRs of one fingerprint in one namespace.
type Lister interface {
	ListByFingerprint(ctx context.Context, namespace, fingerprint string) ([]v1alpha1.RemediationRequest, error)
}

// APILister reads from the API server without a cache: a List without a resourceVersion is
// served as of now, so the decision never rests on a view that lags behind a committed create.
type APILister struct {
	Reader client.Reader // the manager's APIReader, never its cached client
}

// ListByFingerprint lists by field selector, server-side.
func (l APILister) ListByFingerprint(ctx context.Context, namespace, fingerprint string) ([]v1alpha1.RemediationRequest, error) {
	var list v1alpha1.RemediationRequestList
	err := l.Reader.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{FingerprintField: fingerprint})
	return list.Items, err
}
