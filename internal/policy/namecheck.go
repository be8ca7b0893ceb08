package policy

import (
	"fmt"
	"strconv"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/rrguard/rrguard/internal/rules"
)

// generatedSuffix ends the name of everything rrguard writes for a policy: its webhooks and its
// name check.
const generatedSuffix = ".policies.rrguard.kubernaut.ai"

// GeneratedName is the name of a policy's webhooks and name check.
func GeneratedName(policy string) string { return policy + generatedSuffix }

// maxPolicyName is the longest policy name whose GeneratedName is still a valid name (a DNS
// subdomain): a longer one would make the API server refuse every write of the webhook
// configurations, every policy's with it.
const maxPolicyName = validation.DNS1123SubdomainMaxLength - len(generatedSuffix)

// keyVariable is the name under which the generated check evaluates the policy's key expression.
const keyVariable = "key"

// NameCheckPolicy is the check of a new object's final name, after every mutating webhook, that
// the API server does itself for a policy whose NameCheck is APIServer: a ValidatingAdmissionPolicy
// and its binding, both called name, for creates of the target in the namespaces sel selects,
// under the policy's match conditions. It refuses (422) what the validating webhook (NameCheck
// Webhook) refuses, but that for a SHA256 key it checks the name's shape, not its hash (CEL has no
// SHA-256): a later webhook that renames an object to the scheme's name of another key is caught by
// the webhook only.
//
// An object whose key is absent was left alone by the mutating webhook, so it must pass: its key
// expression fails to evaluate, and the policy's failurePolicy is Ignore, unless the key is
// required (the mutating webhook refused such a create; one that reaches here lost its key after
// rrguard, and is refused).
func (c *Compiled) NameCheckPolicy(name string, sel *metav1.LabelSelector) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding) {
	key := "variables." + keyVariable
	// orAbsent lets an object with an empty key pass, as the mutating webhook left it alone.
	orAbsent := func(expr string) string {
		if c.KeyRequired {
			return expr
		}
		return key + " == '' || (" + expr + ")"
	}
	invalid := ptr.To(metav1.StatusReasonInvalid)
	var vals []admissionregistrationv1.Validation
	what := "the first 32 characters of the key"
	nameCheck := rules.NameCELFor(c.prefix, key)
	if c.hex {
		vals = append(vals, admissionregistrationv1.Validation{
			Expression: orAbsent(key + ".matches('^[a-f0-9]{64}$')"), Reason: invalid,
			Message: fmt.Sprintf("the key of policy %s (spec.key.expression) must be 64 lowercase hex characters (a SHA-256)", c.Policy),
		})
	} else {
		what = "the first 32 hex characters of the key's SHA-256"
		nameCheck = rules.NameShapeCEL(c.prefix)
	}
	vals = append(vals, admissionregistrationv1.Validation{
		Expression: orAbsent(nameCheck), Reason: invalid,
		MessageExpression: "'metadata.name ' + object.metadata.name + " + strconv.Quote(fmt.Sprintf(
			" must be %s<%s>-<n>, as rrguard names every new %s of policy %s: create it without choosing a name, "+
				"or check for another mutating webhook or policy that renamed it", c.prefix, what, c.GroupResource, c.Policy)),
	})
	var match []admissionregistrationv1.MatchCondition
	for i, m := range c.matchSrc {
		n := m.Name
		if len(validation.IsQualifiedName(n)) > 0 {
			n = fmt.Sprintf("condition-%d", i)
		}
		match = append(match, admissionregistrationv1.MatchCondition{Name: n, Expression: m.Expression})
	}
	failure := admissionregistrationv1.Ignore
	if c.KeyRequired {
		failure = admissionregistrationv1.Fail
	}
	labels := map[string]string{"app.kubernetes.io/managed-by": "rrguard", NameCheckPolicyLabel: c.Policy}
	// Every field the API server defaults is given as it stores it: an unchanged policy's check
	// compares equal to what is stored and is not rewritten.
	vap := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &failure,
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule: admissionregistrationv1.Rule{APIGroups: []string{c.GroupResource.Group}, APIVersions: c.Versions,
						Resources: []string{c.GroupResource.Resource}, Scope: ptr.To(admissionregistrationv1.AllScopes)},
				}}},
				NamespaceSelector: sel, ObjectSelector: &metav1.LabelSelector{},
				MatchPolicy: ptr.To(admissionregistrationv1.Equivalent),
			},
			MatchConditions: match,
			Variables:       []admissionregistrationv1.Variable{{Name: keyVariable, Expression: c.keySrc}},
			Validations:     vals,
		},
	}
	bind := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: name, ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	return vap, bind
}

// NameCheckPolicyLabel is on every ValidatingAdmissionPolicy and binding rrguard generates, naming
// the UniquenessPolicy it checks for.
const NameCheckPolicyLabel = "rrguard.kubernaut.ai/policy"
