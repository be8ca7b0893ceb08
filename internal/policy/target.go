package policy

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
)

// neverJudged are the resources no policy may name, by group (a "*" resource: the whole group):
// judging their creates could lock the cluster (leases for leader election and node heartbeats,
// events, namespaces, nodes), the API server's own reviews and registrations (authentication and
// authorization reviews, webhook and policy configurations, CRDs, API services, certificate
// requests), or rrguard itself (its policies).
var neverJudged = map[string][]string{
	"":                             {"events", "namespaces", "nodes", "bindings", "serviceaccounts", "componentstatuses"},
	"coordination.k8s.io":          {"*"},
	"events.k8s.io":                {"*"},
	"authentication.k8s.io":        {"*"},
	"authorization.k8s.io":         {"*"},
	"admissionregistration.k8s.io": {"*"},
	"apiextensions.k8s.io":         {"*"},
	"apiregistration.k8s.io":       {"*"},
	"certificates.k8s.io":          {"*"},
	"flowcontrol.apiserver.k8s.io": {"*"},
	"rbac.authorization.k8s.io":    {"*"},
	"rrguard.kubernaut.ai":         {"*"},
}

// neverJudgedNamespaces are the system namespaces no policy may name; rrguard's own is added by
// Compile.
var neverJudgedNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// NeverJudgedNamespaces lists them, rrguard's own (when set) included.
func NeverJudgedNamespaces(rrguardNamespace string) []string {
	out := slices.Clone(neverJudgedNamespaces)
	if rrguardNamespace != "" {
		out = append(out, rrguardNamespace)
	}
	return out
}

// NeverJudgedNamespace reports whether rrguard refuses to judge namespace ns, whose own namespace
// is rrguardNamespace: a policy without namespaces judges every other one.
func NeverJudgedNamespace(ns, rrguardNamespace string) bool {
	return slices.Contains(neverJudgedNamespaces, ns) || (rrguardNamespace != "" && ns == rrguardNamespace)
}

func forbidden(t v1alpha1.Target, rrguardNamespace string, path *field.Path) error {
	if rs, ok := neverJudged[t.Group]; ok && (slices.Contains(rs, "*") || slices.Contains(rs, t.Resource)) {
		return &Error{Reason: ReasonForbiddenTarget, Errs: field.ErrorList{field.Forbidden(path.Child("resource"),
			fmt.Sprintf("%s: rrguard never judges %q of group %q (see docs/design.md, \"What no policy may target\")", ErrForbiddenTarget, t.Resource, t.Group))}}
	}
	for i, ns := range t.Namespaces {
		if NeverJudgedNamespace(ns, rrguardNamespace) {
			return &Error{Reason: ReasonForbiddenTarget, Errs: field.ErrorList{field.Forbidden(path.Child("namespaces").Index(i),
				fmt.Sprintf("%s: rrguard never judges namespace %q (a system namespace, or rrguard's own)", ErrForbiddenTarget, ns))}}
		}
	}
	return nil
}

// TargetString is a target as "<resource>.<group>".
func TargetString(t v1alpha1.Target) string {
	if t.Group == "" {
		return t.Resource
	}
	return t.Resource + "." + t.Group
}
