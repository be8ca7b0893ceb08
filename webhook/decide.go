package webhook

import (
	"errors"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/policy"
)

// decideFacts names the new object c or refuses it, from the facts of its key's objects (from the
// index or a consistent read) and its key's mark: the error is always an *apierrors.StatusError,
// Invalid (422) for exhausted numbers, AlreadyExists (409) naming the object in flight.
func decideFacts(p *policy.Compiled, c *created, facts []decision.Fact, mark int64, now time.Time) (string, error) {
	out, err := decision.Decide(facts, mark, now)
	switch {
	case errors.Is(err, decision.ErrExhausted):
		return "", apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Invalid(keyPath(p, namePath), c.key, "occurrence numbers of this key are exhausted")})
	case err != nil:
		return "", err
	case out.Duplicate != nil:
		return "", Duplicate(p, c.kind.Kind, c.Namespace, *out.Duplicate)
	}
	return p.Name(c.keyHex, out.Next), nil
}

// keyPath is the field of an object its policy's key comes from (spec.signalFingerprint,
// metadata.labels), or orElse when the key is no single field.
func keyPath(p *policy.Compiled, orElse *field.Path) *field.Path {
	if p.KeyField == "" {
		return orElse
	}
	parts := strings.Split(p.KeyField, ".")
	return field.NewPath(parts[0], parts[1:]...)
}

// Duplicate is the answer to a create while inflight is in flight: the same status the API server
// gives for a name collision (409 AlreadyExists, details naming the object), so a creator handles
// both paths with apierrors.IsAlreadyExists and reads the object's name from the details.
func Duplicate(p *policy.Compiled, kind, namespace string, inflight decision.Fact) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure,
		Code:   409,
		Reason: metav1.StatusReasonAlreadyExists,
		Details: &metav1.StatusDetails{
			Group: p.GroupResource.Group,
			Kind:  p.GroupResource.Resource,
			Name:  inflight.Name,
		},
		Message: p.DuplicateMessage(kind, namespace, inflight),
	}}
}
