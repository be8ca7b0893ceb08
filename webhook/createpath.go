package webhook

import (
	"encoding/json"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/rrguard/rrguard/internal/policy"
)

// An object reaches the API server as a create by two routes, and they differ in where its storage
// key comes from:
//
//   - a POST (kubectl create, client-side kubectl apply, any client's Create) is stored under the
//     object's metadata.name as it stands after mutating admission, so a webhook can choose it;
//   - a server-side apply of an RR that does not exist yet is a PATCH: the API server fixed the
//     key from the URL before admission ran (apiserver patcher.applyAdmission, then
//     Store.Update with forceAllowCreate), so renaming the object splits the name it carries
//     from the key it is stored under.
//
// Both reach a webhook as operation CREATE with CreateOptions and the same name in the request.
// What tells them apart is the field manager's record: an apply writes a managedFields entry with
// operation Apply for the request's fieldManager (required on apply), a POST writes Update.

// appliedCreate reports whether a create is a server-side apply, whose name admission must not
// change. When the request's options cannot be read, any Apply entry counts: refusing a POST by
// mistake is safe, renaming an apply is not.
func appliedCreate(req admission.Request, c *created) bool {
	var opts metav1.CreateOptions
	if len(req.Options.Raw) > 0 {
		_ = json.Unmarshal(req.Options.Raw, &opts)
	}
	for _, m := range c.managed {
		if m.Operation == metav1.ManagedFieldsOperationApply && (opts.FieldManager == "" || m.Manager == opts.FieldManager) {
			return true
		}
	}
	return false
}

// checkStoredUnder refuses a create whose name is not the one the API server will store it under
// (whichever mutation renamed it): a POST is stored under its final name, an apply under its URL
// name. applied is appliedCreate(req, c).
func checkStoredUnder(req admission.Request, c *created, applied bool) error {
	if applied && c.Name != req.Name {
		return renamedApply(c, req.Name)
	}
	return nil
}

var namePath = field.NewPath("metadata", "name")

// applyRefused is the answer to a server-side apply whose name is not the one rrguard would give
// the object now: the apply cannot be renamed, so it cannot be admitted.
func applyRefused(c *created, want string) *apierrors.StatusError {
	return apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Invalid(namePath, c.Name, fmt.Sprintf(
		"a server-side apply cannot create a %[1]s under a name of its choosing: rrguard names each new %[1]s after its "+
			"key, and an apply is stored under the name in its URL. Create it instead (kubectl create, or any client's "+
			"create, with any name or generateName: rrguard names it), or apply it as %[2]s, the name a new %[1]s of this key takes now", c.kind.Kind, want))})
}

// renamedApply is the answer when a mutating webhook renamed a server-side apply: the object would
// be stored under its URL name while carrying another.
func renamedApply(c *created, key string) *apierrors.StatusError {
	return apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Invalid(namePath, c.Name, fmt.Sprintf(
		"this create is a server-side apply, stored under the name in its URL (%s), but a mutating webhook renamed it: "+
			"the object would carry a name other than its key. Create it instead (kubectl create), or apply it under the name it is to carry", key))})
}

// notJudged is the answer to a create in a namespace outside the policy's namespaces: rrguard
// neither watches it nor could release what it admitted there.
func notJudged(c *created, p *policy.Compiled) *apierrors.StatusError {
	return apierrors.NewForbidden(p.GroupResource, "", fmt.Errorf(
		"rrguard judges %s only in the namespaces of %s (%s), and %q is not one of them: "+
			"create it in one of those, or add this namespace there", p.GroupResource, p.NamespacesFrom, strings.Join(p.Namespaces, ", "), c.Namespace))
}
