package localcp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// webhookConfigurations reads the webhook configurations in dirs under the names a cluster gets
// from config/default (its namePrefix added), so that tests look them up by their real names.
func webhookConfigurations(root string, dirs ...string) ([]*admissionregistrationv1.MutatingWebhookConfiguration, []*admissionregistrationv1.ValidatingWebhookConfiguration, error) {
	var k struct {
		NamePrefix string `json:"namePrefix"`
	}
	b, err := os.ReadFile(filepath.Join(root, "config", "default", "kustomization.yaml"))
	if err == nil {
		err = yaml.Unmarshal(b, &k)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading config/default's namePrefix: %w", err)
	}
	var mut []*admissionregistrationv1.MutatingWebhookConfiguration
	var val []*admissionregistrationv1.ValidatingWebhookConfiguration
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			return nil, nil, err
		}
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, nil, err
			}
			dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
			for {
				var u unstructured.Unstructured
				if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					return nil, nil, fmt.Errorf("%s: %w", f, err)
				}
				var out interface{ SetName(string) }
				switch u.GetKind() {
				case "MutatingWebhookConfiguration":
					m := &admissionregistrationv1.MutatingWebhookConfiguration{}
					mut, out = append(mut, m), m
				case "ValidatingWebhookConfiguration":
					v := &admissionregistrationv1.ValidatingWebhookConfiguration{}
					val, out = append(val, v), v
				default:
					continue
				}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
					return nil, nil, fmt.Errorf("%s: %w", f, err)
				}
				out.SetName(k.NamePrefix + u.GetName())
			}
		}
	}
	return mut, val, nil
}
