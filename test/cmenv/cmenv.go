// Package cmenv runs cert-manager's own controllers in-process against a testenv control plane:
// the Issuer, Certificate and CertificateRequest controllers (self-signed and CA issuers), and the
// cainjector. Tests then see cert-manager issue, renew and inject exactly as it does in a cluster.
package cmenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmcontroller "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The Issuer controller's implementations of the two issuer types rrguard's config uses.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/rrguard/rrguard/test/testenv"
)

// Controllers are the cert-manager controllers that issue with self-signed and CA issuers.
var Controllers = []string{
	issuers.ControllerName,
	approver.ControllerName,
	crselfsigned.CRControllerName,
	crca.CRControllerName,
	trigger.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	issuing.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
}

// CRDs is the folder of cert-manager's CRDs in its Go module, for testenv.Options.ExtraCRDs.
func CRDs() (string, error) {
	dir, err := moduleDir("github.com/cert-manager/cert-manager")
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "deploy", "crds"), nil
}

// Main is testenv.Main for tests of rrguard's install whole (config/default, the Helm chart): the
// control plane also knows cert-manager's CRDs and types, and prometheus-operator's ServiceMonitor
// and PrometheusRule.
func Main(m *testing.M, env **testenv.Env) int {
	cm, err := CRDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mon, err := testenv.MonitoringCRDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(mon)
	return testenv.Main(m, testenv.Options{ExtraCRDs: []string{cm, mon}, AddToScheme: []func(*runtime.Scheme) error{cmapi.AddToScheme}}, env)
}

// Start runs the controllers and the cainjector until stop is called.
func Start(ctx context.Context, env *testenv.Env, kubeconfig string) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	defer func() {
		if err != nil {
			stop()
		}
	}()

	factory, err := cmcontroller.NewContextFactory(ctx, cmcontroller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   100,
		KubernetesAPIBurst: 200,
		IssuerOptions:      cmcontroller.IssuerOptions{ClusterResourceNamespace: "cert-manager"},
		CertificateOptions: cmcontroller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: 5 * time.Second,
		},
	})
	if err != nil {
		return stop, fmt.Errorf("cert-manager context: %w", err)
	}
	known := cmcontroller.Known()
	for _, name := range Controllers {
		construct, ok := known[name]
		if !ok {
			return stop, fmt.Errorf("cert-manager controller %q is not registered", name)
		}
		c, err := construct(factory)
		if err != nil {
			return stop, fmt.Errorf("cert-manager controller %q: %w", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Run(2, ctx)
		}()
	}
	// The controllers registered their informers with the factory's shared informer factories;
	// start them as cert-manager's controller binary does.
	shared, err := factory.Build()
	if err != nil {
		return stop, err
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return stop, err
		}
	}
	// cainjector names its server-side-apply field manager after the client's user agent.
	cfg := rest.CopyConfig(env.Config)
	cfg.UserAgent = "cainjector/rrguard-test"
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// As cert-manager's cainjector binary: Secrets are watched as metadata only and read
		// directly from the API server.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		return stop, err
	}
	if err := cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		EnableCertificatesDataSource: true,
		EnabledReconcilersFor: map[string]bool{
			"mutatingwebhookconfiguration":   true,
			"validatingwebhookconfiguration": true,
		},
	}); err != nil {
		return stop, fmt.Errorf("cainjector: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			ctrl.Log.WithName("cainjector").Error(err, "cainjector stopped")
		}
	}()
	return stop, nil
}

// moduleDir is where the go command keeps a module that rrguard's go.mod requires.
func moduleDir(path string) (string, error) {
	root, err := testenv.Root()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", path)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", path, err)
	}
	return strings.TrimSpace(string(out)), nil
}
