package testenv

import (
	"path/filepath"
	"testing"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig writes the admin kubeconfig into the test's temporary folder and returns its path.
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := e.WriteKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// KubeconfigAs is Kubeconfig acting as user in groups (the admin impersonates), to run a command
// with a ServiceAccount's rights and no more: user system:serviceaccount:<namespace>:<name>.
func (e *Env) KubeconfigAs(t testing.TB, user string, groups ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := e.WriteKubeconfigAs(path, &clientcmdapi.AuthInfo{Impersonate: user, ImpersonateGroups: groups}); err != nil {
		t.Fatal(err)
	}
	return path
}
