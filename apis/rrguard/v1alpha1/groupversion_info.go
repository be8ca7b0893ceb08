// Package v1alpha1 holds rrguard's own API (rrguard.kubernaut.ai/v1alpha1): the UniquenessPolicy,
// which declares, for one resource, the key that at most one object may be in flight for, how a
// new object is named from it, and when an object stops being in flight. It depends on
// apimachinery only.
//
// +kubebuilder:object:generate=true
// +groupName=rrguard.kubernaut.ai
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of UniquenessPolicy.
	GroupVersion = schema.GroupVersion{Group: "rrguard.kubernaut.ai", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &UniquenessPolicy{}, &UniquenessPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
