package localcp

import (
	"fmt"
	"os/exec"
	"strings"

	"k8s.io/apimachinery/pkg/util/version"
)

// binaryRelease runs kube-apiserver --version ("Kubernetes v1.32.13").
func binaryRelease(apiserver string) (*version.Version, error) {
	out, err := exec.Command(apiserver, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", apiserver, err)
	}
	v, err := version.ParseGeneric(strings.TrimPrefix(strings.TrimSpace(string(out)), "Kubernetes "))
	if err != nil {
		return nil, fmt.Errorf("%s --version said %q: %w", apiserver, out, err)
	}
	return v, nil
}

// mutatingAdmissionPolicyVersion is the admissionregistration.k8s.io version that serves
// MutatingAdmissionPolicy in a release: v1alpha1 from 1.32, v1beta1 from 1.34, v1 (on by default)
// from 1.36.
func mutatingAdmissionPolicyVersion(minor uint) string {
	switch {
	case minor >= 36:
		return "v1"
	case minor >= 34:
		return "v1beta1"
	default:
		return "v1alpha1"
	}
}

// MutatingAdmissionPolicyVersion is the version of admissionregistration.k8s.io to write a
// MutatingAdmissionPolicy in, on this control plane (testenv serves it on every release).
func (e *Env) MutatingAdmissionPolicyVersion() string {
	return mutatingAdmissionPolicyVersion(e.Release.Minor())
}
