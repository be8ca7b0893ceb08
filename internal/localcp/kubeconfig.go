package localcp

import (
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes a kubeconfig for the control plane's admin user, for kubectl.
func (e *Env) WriteKubeconfig(path string) error {
	return e.WriteKubeconfigAs(path, &clientcmdapi.AuthInfo{})
}

// WriteKubeconfigAs writes a kubeconfig with the admin's credentials and user's other settings
// (impersonation, say).
func (e *Env) WriteKubeconfigAs(path string, user *clientcmdapi.AuthInfo) error {
	c := e.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rrguard-local"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	user.ClientCertificateData, user.ClientKeyData, user.Token = c.CertData, c.KeyData, c.BearerToken
	cfg.AuthInfos["admin"] = user
	cfg.Contexts["rrguard-local"] = &clientcmdapi.Context{Cluster: "rrguard-local", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "rrguard-local"
	return clientcmd.WriteToFile(*cfg, path)
}
