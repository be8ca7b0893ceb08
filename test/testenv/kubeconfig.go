package testenv

import (
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes a kubeconfig for the control plane's admin user, for kubectl.
func (e *Env) WriteKubeconfig(path string) error {
	return e.writeKubeconfig(path, &clientcmdapi.AuthInfo{})
}

func (e *Env) writeKubeconfig(path string, user *clientcmdapi.AuthInfo) error {
	c := e.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rrguard-local"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	user.ClientCertificateData, user.ClientKeyData, user.Token = c.CertData, c.KeyData, c.BearerToken
	cfg.AuthInfos["admin"] = user
	cfg.Contexts["rrguard-local"] = &clientcmdapi.Context{Cluster: "rrguard-local", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "rrguard-local"
	return clientcmd.WriteToFile(*cfg, path)
}

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
	if err := e.writeKubeconfig(path, &clientcmdapi.AuthInfo{Impersonate: user, ImpersonateGroups: groups}); err != nil {
		t.Fatal(err)
	}
	return path
}
