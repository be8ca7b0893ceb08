package localcp

import (
	"bytes"
	"context"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Policy reads config/policy: the ValidatingAdmissionPolicy and its binding, as shipped.
func Policy(root string) (*admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding, error) {
	b, err := os.ReadFile(filepath.Join(root, "config", "policy", "policy.yaml"))
	if err != nil {
		return nil, nil, err
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	p := &admissionregistrationv1.ValidatingAdmissionPolicy{}
	bind := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	if err := dec.Decode(p); err != nil {
		return nil, nil, err
	}
	if err := dec.Decode(bind); err != nil {
		return nil, nil, err
	}
	return p, bind, nil
}

// InstallPolicy creates config/policy's objects (again, when a test removed them).
func (e *Env) InstallPolicy(ctx context.Context) error {
	p, bind, err := Policy(e.Root)
	if err != nil {
		return err
	}
	for _, o := range []client.Object{p, bind} {
		if err := e.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// RemovePolicy deletes config/policy's binding and policy, as before an install.
func (e *Env) RemovePolicy(ctx context.Context) error {
	p, bind, err := Policy(e.Root)
	if err != nil {
		return err
	}
	for _, o := range []client.Object{bind, p} {
		if err := e.Client.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// BindingName is the shipped binding's name, for JudgeOnly.
func (e *Env) BindingName() string {
	_, bind, err := Policy(e.Root)
	if err != nil {
		return ""
	}
	return bind.Name
}
