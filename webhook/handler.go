package webhook

import (
	"encoding/json"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// Paths the webhook server serves; config/webhook points the API server at them.
const (
	NamePath  = "/mutate-remediationrequest"
	CheckPath = "/validate-remediationrequest"
)

// decodeCreate turns a request into the RR being created, or into the typed denial a client
// should see. skip is true for requests the webhooks do not judge (anything but CREATE).
func decodeCreate(req admission.Request) (rr *v1alpha1.RemediationRequest, skip bool, err error) {
	if req.Resource.Group != groupResource.Group || req.Resource.Resource != groupResource.Resource ||
		req.SubResource != "" {
		return nil, false, apierrors.NewBadRequest(fmt.Sprintf(
			"rrguard judges only %s; it was sent %s (subresource %q): check the webhook configuration",
			groupResource, req.Resource, req.SubResource))
	}
	if req.Operation != admissionv1.Create {
		return nil, true, nil
	}
	if req.Resource.Version != v1alpha1.GroupVersion.Version {
		return nil, false, apierrors.NewBadRequest(fmt.Sprintf(
			"rrguard understands %s only, got version %q", v1alpha1.GroupVersion, req.Resource.Version))
	}
	rr = &v1alpha1.RemediationRequest{}
	if err := json.Unmarshal(req.Object.Raw, rr); err != nil {
		return nil, false, apierrors.NewBadRequest("cannot decode the RemediationRequest: " + err.Error())
	}
	// The object carries no namespace when the client left it to the URL.
	rr.Namespace = req.Namespace
	return rr, false, nil
}

// deny turns a typed error into an admission denial that carries its whole status (code,
// reason, details); the API server hands that status to the client unchanged but for a prefix
// on the message.
func deny(err error) admission.Response {
	// errors.As, not a type assertion: a StatusError wrapped on its way up keeps its code.
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		status = apierrors.NewInternalError(err)
	}
	st := status.Status()
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &st}}
}

// decisionOf labels a denial for metrics.
func decisionOf(err error) string {
	switch {
	case apierrors.IsAlreadyExists(err):
		return DecisionDuplicate
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return DecisionInvalid
	default:
		return DecisionError
	}
}
