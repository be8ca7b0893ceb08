package webhook

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	// ScanNamespace lists the whole namespace, in pages, and keeps the fingerprint's RRs: for a
	// CRD that does not declare spec.signalFingerprint selectable (the API server then refuses the
	// field selector). The pages of one List are served from one snapshot, so it is as consistent
	// as the selector's List, and costs a read of every RR of the namespace (so does the
	// selector's, server-side: custom resources are filtered after the read), shipped to rrguard.
	ScanNamespace bool
}

// scanPage is the page size of a namespace scan.
const scanPage = 500

// ListByFingerprint lists by field selector, server-side, or scans the namespace.
func (l APILister) ListByFingerprint(ctx context.Context, namespace, fingerprint string) ([]v1alpha1.RemediationRequest, error) {
	if !l.ScanNamespace {
		var list v1alpha1.RemediationRequestList
		err := l.Reader.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{FingerprintField: fingerprint})
		return list.Items, err
	}
	var out []v1alpha1.RemediationRequest
	cont := ""
	for {
		var list v1alpha1.RemediationRequestList
		if err := l.Reader.List(ctx, &list, client.InNamespace(namespace), client.Limit(scanPage), client.Continue(cont)); err != nil {
			return nil, err
		}
		for i := range list.Items {
			if list.Items[i].Spec.SignalFingerprint == fingerprint {
				out = append(out, list.Items[i])
			}
		}
		if cont = list.Continue; cont == "" {
			return out, nil
		}
	}
}

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
