package testenv

import (
	"context"
	"errors"
	"fmt"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"slices"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

const rrCRD = "remediationrequests.kubernaut.ai"

// FingerprintField is the selectable field Kubernaut's CRD declares on the fingerprint.
const FingerprintField = "spec.signalFingerprint"

// errNoSelectableFingerprint: the API server refuses a field selector on the fingerprint.
var errNoSelectableFingerprint = errors.New("the RemediationRequest CRD does not declare spec.signalFingerprint selectable")

// probeSelectableFingerprint asks the API server for RRs by the fingerprint's field selector,
// once: nil when it serves it, errNoSelectableFingerprint when it refuses the selector.
func probeSelectableFingerprint(ctx context.Context, r client.Reader, namespace string) error {
	var list v1alpha1.RemediationRequestList
	err := r.List(ctx, &list, client.InNamespace(namespace), client.Limit(1),
		client.MatchingFields{FingerprintField: "0000000000000000000000000000000000000000000000000000000000000000"})
	if apierrors.IsBadRequest(err) {
		return fmt.Errorf("%w (%v)", errNoSelectableFingerprint, err)
	}
	return err
}

// SelectableFingerprint declares spec.signalFingerprint selectable on the RR CRD (as Kubernaut's
// CRD and config/crd do), or takes it off (as a CRD without selectable fields has it), and waits
// until the API server serves the field selector accordingly.
func (e *Env) SelectableFingerprint(ctx context.Context, on bool) error {
	field := apiextensionsv1.SelectableField{JSONPath: "." + FingerprintField}
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := e.Client.Get(ctx, client.ObjectKey{Name: rrCRD}, &crd); err != nil {
			return err
		}
		for i := range crd.Spec.Versions {
			v := &crd.Spec.Versions[i]
			v.SelectableFields = slices.DeleteFunc(v.SelectableFields, func(f apiextensionsv1.SelectableField) bool { return f == field })
			if on {
				v.SelectableFields = append(v.SelectableFields, field)
			}
		}
		return e.Client.Update(ctx, &crd)
	}); err != nil {
		return fmt.Errorf("updating the CRD's selectable fields: %w", err)
	}
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		last = probeSelectableFingerprint(ctx, e.Client, "default")
		if on {
			return last == nil, nil
		}
		return errors.Is(last, errNoSelectableFingerprint), nil
	}); err != nil {
		return fmt.Errorf("the API server does not yet serve the selector as the CRD says (%v): %w", last, err)
	}
	return nil
}
