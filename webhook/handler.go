package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/policy"
)

// Paths the webhook server serves; config/webhook points the API server at them.
const (
	NamePath  = "/mutate-remediationrequest"
	CheckPath = "/validate-remediationrequest"
)

// PolicyPath is where the webhook server serves a policy other than the RR's: /mutate/<policy>
// and /validate/<policy>.
func PolicyPath(kind, policy string) string { return "/" + kind + "/" + policy }

// createReads is what a webhook reads of a new object besides what its policy reads.
var createReads = (&jsonproject.Tree{}).Add("metadata", "name").Add("metadata", "generateName").
	Add("metadata", "finalizers").Add("metadata", "managedFields").Touch("metadata", "annotations")

// created is the object of a CREATE, as far as a webhook reads it.
type created struct {
	Name, GenerateName, Namespace string
	Finalizers                    []string
	hasMetadata                   bool
	managed                       []metav1.ManagedFieldsEntry // manager and operation only
	kind                          schema.GroupKind
	fields                        map[string]any // the projected object, for the policy
	matched                       bool           // every match condition holds
	keyless                       bool           // matched, but its key is absent and not required
	keyHex, key                   string
}

// decodeCreate turns a request into the object being created, judged by p as far as its match
// conditions and key, or into the typed denial a client should see. skip is true for requests the
// webhooks do not judge: anything but CREATE, objects the policy's match conditions leave alone,
// and objects without a key when the policy does not require one (c.keyless).
func decodeCreate(ctx context.Context, req admission.Request, p *policy.Compiled, tree *jsonproject.Tree) (c *created, skip bool, err error) {
	gr := p.GroupResource
	if req.Resource.Group != gr.Group || req.Resource.Resource != gr.Resource || req.SubResource != "" {
		return nil, false, apierrors.NewBadRequest(fmt.Sprintf(
			"rrguard judges only %s here; it was sent %s (subresource %q): check the webhook configuration",
			gr, req.Resource, req.SubResource))
	}
	if req.Operation != admissionv1.Create {
		return nil, true, nil
	}
	if !slices.Contains(p.Versions, req.Resource.Version) {
		return nil, false, apierrors.NewBadRequest(fmt.Sprintf(
			"rrguard's policy %s judges %s in versions %v only, got version %q", p.Policy, gr, p.Versions, req.Resource.Version))
	}
	kind := req.Kind.Kind
	if kind == "" {
		kind = gr.Resource
	}
	if !json.Valid(req.Object.Raw) {
		return nil, false, apierrors.NewBadRequest("cannot decode the " + kind + ": not valid JSON")
	}
	m, err := jsonproject.Decode(req.Object.Raw, tree)
	if err != nil {
		return nil, false, apierrors.NewBadRequest("cannot decode the " + kind + ": " + err.Error())
	}
	c = &created{kind: schema.GroupKind{Group: gr.Group, Kind: kind}, fields: m}
	if md, ok := m["metadata"].(map[string]any); ok {
		c.hasMetadata = true
		c.Name, _ = md["name"].(string)
		c.GenerateName, _ = md["generateName"].(string)
		if fs, ok := md["finalizers"].([]any); ok {
			for _, f := range fs {
				if s, ok := f.(string); ok {
					c.Finalizers = append(c.Finalizers, s)
				}
			}
		}
		if ms, ok := md["managedFields"].([]any); ok {
			for _, x := range ms {
				e, _ := x.(map[string]any)
				manager, _ := e["manager"].(string)
				op, _ := e["operation"].(string)
				c.managed = append(c.managed, metav1.ManagedFieldsEntry{Manager: manager, Operation: metav1.ManagedFieldsOperationType(op)})
			}
		}
	} else if m["metadata"] != nil {
		return nil, false, apierrors.NewBadRequest("cannot decode the " + kind + ": metadata is not an object")
	}
	// The object carries no namespace when the client left it to the URL.
	c.Namespace = req.Namespace
	matched, err := p.Matches(ctx, m)
	if err != nil {
		return nil, false, invalidObject(p, c, err)
	}
	if !matched {
		return c, true, nil
	}
	c.matched = true
	if c.keyHex, c.key, err = p.Key(ctx, m); err != nil {
		if policy.IsKeyAbsent(err) && !p.KeyRequired {
			c.keyless = true
			return c, true, nil
		}
		return nil, false, invalidObject(p, c, err)
	}
	return c, false, nil
}

// invalidObject is the 422 for an object the policy cannot judge: the key (or a match
// condition) cannot be read from it. It names the field of the object where the key comes from.
func invalidObject(p *policy.Compiled, c *created, err error) *apierrors.StatusError {
	path := keyPath(p, field.NewPath("metadata"))
	var ee *policy.EvalError
	detail := err.Error()
	if errors.As(err, &ee) {
		detail = fmt.Sprintf("%v (policy %s, %s)", ee.Err, p.Policy, ee.Field)
	}
	if policy.IsKeyAbsent(err) {
		detail += fmt.Sprintf("; policy %s requires a key of every %s it matches (spec.key.required): set what the key reads, "+
			"or exempt such objects with a match condition of the policy", p.Policy, c.kind.Kind)
	}
	var value any = c.key
	if errors.Is(err, policy.ErrEmptyKey) || c.key == "" {
		return apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Required(path, detail)})
	}
	return apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Invalid(path, value, detail)})
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
