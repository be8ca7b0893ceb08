package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// MonitoringCRDs generates the ServiceMonitor and PrometheusRule CRDs from prometheus-operator's
// own API types (pinned in test/tools), as prometheus-operator itself does, into a new folder for
// Options.ExtraCRDs; the caller removes it.
func MonitoringCRDs() (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "rrguard-monitoring-crds-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "tool", "controller-gen", "crd:maxDescLen=0",
		"paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1", "output:crd:dir="+dir)
	cmd.Dir = filepath.Join(root, "test", "tools")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("generating monitoring CRDs: %v\n%s", err, out)
	}
	for _, keep := range []string{"servicemonitors", "prometheusrules"} {
		if _, err := os.Stat(filepath.Join(dir, "monitoring.coreos.com_"+keep+".yaml")); err != nil {
			return "", err
		}
	}
	return dir, nil
}
