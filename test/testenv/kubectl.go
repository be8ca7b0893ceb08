package testenv

import (
	"bytes"
	"context"
	"os/exec"
)

// Kubectl runs kubectl against the control plane of kubeconfig with stdin as its input (nil:
// none), as an operator would, and returns what it printed, errors included.
func Kubectl(ctx context.Context, kubeconfig string, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
