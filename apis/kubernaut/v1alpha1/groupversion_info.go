// Package v1alpha1 holds Kubernaut's RemediationRequest API (kubernaut.ai/v1alpha1) as far as
// rrguard needs it: the whole spec with its validation, and the status that Kubernaut's
// controllers write, kept loss-free so that rrguard's CRD can stand in for Kubernaut's in tests.
// It depends on apimachinery only, so that any RR creator can import it cheaply.
//
// +kubebuilder:object:generate=true
// +groupName=kubernaut.ai
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of RemediationRequest.
	GroupVersion = schema.GroupVersion{Group: "kubernaut.ai", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &RemediationRequest{}, &RemediationRequestList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
