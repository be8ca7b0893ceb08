package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/webhook"
)

const rrCRD = "remediationrequests.kubernaut.ai"

// SelectableFingerprint declares spec.signalFingerprint selectable on the RR CRD (as Kubernaut's
// CRD and config/crd do), or takes it off (as a CRD without selectable fields has it), and waits
// until the API server serves the field selector accordingly.
func (e *Env) SelectableFingerprint(ctx context.Context, on bool) error {
	field := apiextensionsv1.SelectableField{JSONPath: "." + webhook.FingerprintField}
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
		last = webhook.ProbeSelectableFingerprint(ctx, e.Client, "default")
		if on {
			return last == nil, nil
		}
		return errors.Is(last, webhook.ErrNoSelectableFingerprint), nil
	}); err != nil {
		return fmt.Errorf("the API server does not yet serve the selector as the CRD says (%v): %w", last, err)
	}
	return nil
}
