package localcp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Kustomize renders the kustomization in root/dir with kubectl's own kustomize, as
// `kubectl apply -k` does.
func Kustomize(root, dir string) ([]byte, error) {
	out, err := exec.Command("kubectl", "kustomize", filepath.Join(root, dir)).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return nil, fmt.Errorf("kubectl kustomize %s: %v\n%s", dir, err, exit.Stderr)
		}
		return nil, fmt.Errorf("kubectl kustomize %s: %w", dir, err)
	}
	return out, nil
}

// KustomizeWithCheckWebhook renders config/default with its commented validating-webhook
// component uncommented, as the comment there says to do, in a copy of config/ under tmp.
func KustomizeWithCheckWebhook(root, tmp string) ([]byte, error) {
	if out, err := exec.Command("cp", "-r", filepath.Join(root, "config"), tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying config: %v\n%s", err, out)
	}
	k := filepath.Join(tmp, "config", "default", "kustomization.yaml")
	b, err := os.ReadFile(k)
	if err != nil {
		return nil, err
	}
	on := strings.Replace(string(b), "# components:\n#   - ../components/validating-webhook", "components:\n  - ../components/validating-webhook", 1)
	if on == string(b) {
		return nil, errors.New("config/default no longer has the commented validating-webhook component")
	}
	if err := os.WriteFile(k, []byte(on), 0o644); err != nil {
		return nil, err
	}
	return Kustomize(tmp, filepath.Join("config", "default"))
}

// Objects splits rendered YAML or JSON into its objects.
func Objects(rendered []byte) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(rendered), 4096)
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return objs, err
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}
