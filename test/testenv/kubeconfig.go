package testenv

import (
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes a kubeconfig for the control plane's admin user, for kubectl.
func (e *Env) WriteKubeconfig(path string) error {
	c := e.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["rrguard-local"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	cfg.Contexts["rrguard-local"] = &clientcmdapi.Context{Cluster: "rrguard-local", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "rrguard-local"
	return clientcmd.WriteToFile(*cfg, path)
}
