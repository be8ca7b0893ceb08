// Package localcp runs a local control plane: a real kube-apiserver and etcd (built by `make
// testbin`) with rrguard's CRDs and webhook configurations installed, and rrguard replicas
// in-process. `make run` runs on it; test/testenv builds the integration tests' environment on it.
package localcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/rrguard/rrguard/certs"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/webhook/serve"
)

// K8sVersion is the version of the control plane `make testbin` builds.
const K8sVersion = "1.37.2"

// MarksNamespace is rrguard's own namespace in tests: it holds the high-water marks.
const MarksNamespace = "rrguard-system"

// ErrNoBinaries means `make testbin` has not run on this machine.
var ErrNoBinaries = errors.New("kube-apiserver and etcd not found: run `make testbin` (or `make test`, which runs it)")

// Options choose what to install beside the CRD.
type Options struct {
	// Webhooks installs config/webhook, pointed at a local address that ServeRRGuard serves, and
	// the check after every mutation: config/policy (the API server's CEL) by default.
	Webhooks bool
	// CheckWebhook installs rrguard's validating webhook (config/components/validating-webhook)
	// as the check instead of the policy.
	CheckWebhook bool
	// ExtraCRDs are more CRD files or folders to install (cert-manager's, say).
	ExtraCRDs []string
	// Serving, when set, is the TLS material the webhooks are served with and trusted by; by
	// default envtest makes its own.
	Serving *certs.Bundle
	// WebhookPort fixes the local webhook port; by default a free one is picked.
	WebhookPort int
	// AddToScheme registers more types with Env.Client (cert-manager's, say).
	AddToScheme []func(*runtime.Scheme) error
	// NoKubernaut is a cluster without Kubernaut: no RR CRD, and with Webhooks, none of the RR's
	// webhooks or its ValidatingAdmissionPolicy; a replica serves only what policies configure.
	// ServeOptions then enforce no built-in policy.
	NoKubernaut bool
	// Controllers, when set, runs kube-controller-manager of the same release with only these
	// controllers (its --controllers: "job", say), for tests of what a controller does.
	Controllers []string
}

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client
	Root   string // the checkout's root folder
	// Release is the kube-apiserver's (from its --version), for tests of what differs by release.
	Release *version.Version
	env     *envtest.Environment
	reaper  *reaper
	// noKubernaut: Options.NoKubernaut.
	noKubernaut bool
	// onStop run before the control plane stops: rrguard replicas, controllers of a test.
	onStop []func() error
	// controllers: Options.Controllers; stopControllers stops the running controller manager.
	controllers     []string
	stopControllers func() error
}

// BinDir is where `make testbin` puts kube-apiserver and etcd: $RRGUARD_TESTBIN, else a per-user
// cache outside the checkout.
func BinDir() string {
	if d := os.Getenv("RRGUARD_TESTBIN"); d != "" {
		return d
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "rrguard", "testbin", "k8s-"+K8sVersion+"-r3")
}

// Root finds the checkout's root: the nearest folder above the working directory whose go.mod
// declares rrguard's module.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/rrguard/rrguard\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the rrguard checkout")
		}
		dir = parent
	}
}

// Start starts etcd and kube-apiserver and installs the CRD (and the webhooks, when asked).
// Stop must follow; if the process dies first, a reaper process stops both anyway.
func Start(o Options) (*Env, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	bin := BinDir()
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("%w (looked in %s)", ErrNoBinaries, bin)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: bin,
		CRDInstallOptions: envtest.CRDInstallOptions{
			Paths:              append(crdPaths(root, o.NoKubernaut), o.ExtraCRDs...),
			ErrorIfPathMissing: true,
		},
		ErrorIfCRDPathMissing: true,
	}
	if o.Webhooks {
		paths := []string{filepath.Join(root, "config", "webhook")}
		if o.CheckWebhook {
			paths = append(paths, filepath.Join(root, "config", "components", "validating-webhook"))
		}
		mut, val, err := webhookConfigurations(root, paths...)
		if err != nil {
			return nil, err
		}
		if o.NoKubernaut {
			// Served where rrguard's policies' webhooks call it, with nothing of the RR's.
			mut, val = nil, nil
		}
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{
			MutatingWebhooks:   mut,
			ValidatingWebhooks: val,
			LocalServingHost:   "127.0.0.1",
			LocalServingPort:   o.WebhookPort,
		}

	}
	// A fixed folder for the API server's serving certificates lets RestartAPIServer keep them,
	// and with them every client's trust.
	certDir, err := os.MkdirTemp("", "rrguard-apiserver-")
	if err != nil {
		return nil, err
	}
	env.ControlPlane.GetAPIServer().CertDir = certDir
	release, err := binaryRelease(filepath.Join(bin, "kube-apiserver"))
	if err != nil {
		return nil, err
	}
	// A graceful stop ends open watches after 2 s instead of letting them hold the server's
	// shutdown for its full 60 s (RestartAPIServer under a storm took 63 s).
	env.ControlPlane.GetAPIServer().Configure().Set("shutdown-watch-termination-grace-period", "2s")
	// A test fixture, not something rrguard needs: the test that renames an apply with a
	// MutatingAdmissionPolicy needs the API served, and before 1.36 it is off by default.
	if mapVersion := mutatingAdmissionPolicyVersion(release.Minor()); mapVersion != "v1" {
		args := env.ControlPlane.GetAPIServer().Configure()
		args.Append("feature-gates", "MutatingAdmissionPolicy=true")
		args.Append("runtime-config", "admissionregistration.k8s.io/"+mapVersion+"=true")
	}
	// A graceful stop under load drains in-flight requests first; envtest's 20 s is short for it.
	env.ControlPlaneStopTimeout = 90 * time.Second
	// Keep the reaper ahead of the processes it guards: it learns their PIDs after they start.
	rp, err := startReaper()
	if err != nil {
		return nil, err
	}
	cfg, err := env.Start()
	rp.guardChildren()
	if err != nil {
		_ = env.Stop()
		rp.stop()
		return nil, err
	}
	// Tests and benchmarks drive hundreds of concurrent requests: no client-side throttling.
	cfg.QPS, cfg.Burst = -1, -1
	scheme := cluster.Scheme()
	for _, add := range append([]func(*runtime.Scheme) error{apiextensionsv1.AddToScheme}, o.AddToScheme...) {
		if err := add(scheme); err != nil {
			_ = env.Stop()
			rp.stop()
			return nil, err
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		rp.stop()
		return nil, err
	}
	e := &Env{Config: cfg, Client: c, Root: root, env: env, reaper: rp, Release: release}
	e.OnStop(func() error { return os.RemoveAll(certDir) })
	if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MarksNamespace}}); err != nil {
		_ = e.Stop()
		return nil, err
	}
	e.noKubernaut = o.NoKubernaut
	if o.Webhooks && !o.CheckWebhook && !o.NoKubernaut {
		if err := e.InstallPolicy(context.Background()); err != nil {
			_ = e.Stop()
			return nil, err
		}
	}
	if len(o.Controllers) > 0 {
		if err := e.startControllers(o.Controllers); err != nil {
			_ = e.Stop()
			return nil, err
		}
	}
	if o.Webhooks && o.Serving != nil {
		if err := e.useServing(context.Background(), o.Serving); err != nil {
			_ = e.Stop()
			return nil, err
		}
	}
	return e, nil
}

// crdPaths are the CRDs every local control plane has: rrguard's UniquenessPolicy, and unless
// noKubernaut, Kubernaut's RemediationRequest.
func crdPaths(root string, noKubernaut bool) []string {
	paths := []string{filepath.Join(root, "config", "crd", "policies")}
	if !noKubernaut {
		paths = append(paths, filepath.Join(root, "config", "crd", "bases"))
	}
	return paths
}

// Stop stops the control plane and removes its data.
func (e *Env) Stop() error {
	for i := len(e.onStop) - 1; i >= 0; i-- {
		_ = e.onStop[i]()
	}
	err := e.env.Stop()
	e.reaper.stop()
	return err
}

// OnStop registers f to run when Stop is called, before the control plane stops, in reverse
// order of registration.
func (e *Env) OnStop(f func() error) { e.onStop = append(e.onStop, f) }

// RestartAPIServer stops kube-apiserver and starts it again on the same address and certificates;
// etcd and its data stay.
func (e *Env) RestartAPIServer() error {
	api := e.env.ControlPlane.GetAPIServer()
	if err := api.Stop(); err != nil {
		return err
	}
	if err := api.Start(); err != nil {
		return err
	}
	e.reaper.guardChildren()
	return nil
}

// Environment exposes envtest's Environment (its webhook install options, for instance).
func (e *Env) Environment() *envtest.Environment { return e.env }

// ServeOptions are the options for an in-process rrguard replica that the API server reaches at
// the address the installed webhook configurations name.
func (e *Env) ServeOptions() serve.Options {
	w := e.env.WebhookInstallOptions
	builtins := []string{serve.RRPolicy}
	if e.noKubernaut {
		builtins = nil
	}
	return serve.Options{
		Host: w.LocalServingHost, Port: w.LocalServingPort, CertDir: w.LocalServingCertDir,
		MetricsAddr: "0", ProbeAddr: "0",
		MarksNamespace: MarksNamespace,
		// The RR policy, as the binary enforces it by default (every local control plane has
		// Kubernaut's CRD).
		BuiltinPolicies: builtins,
		// The policies' webhooks call the address the installed ones do, with the local CA.
		PolicyWebhookClient: admissionregistrationv1.WebhookClientConfig{
			URL:      ptr.To("https://" + net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort))),
			CABundle: w.LocalServingCAData,
		},
		// Tests delete RRs right after creating them; the hold is tested where it is the point.
		ReleaseMinAge: time.Millisecond,
		// With a 1 ms hold, a sweep would release every RR while a test reads and updates it;
		// a replica sweeps once when it starts, and the tests of the early release sweep often.
		ReleaseEvery: time.Hour,
	}
}

// Namespace creates a namespace with a unique name for one test.
func (e *Env) Namespace(ctx context.Context, prefix string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(ctx, ns); err != nil {
		return "", err
	}
	return ns.Name, nil
}

// useServing re-points the installed webhook configurations at the given TLS material (envtest
// always installs them with a CA of its own first).
func (e *Env) useServing(ctx context.Context, b *certs.Bundle) error {
	w := &e.env.WebhookInstallOptions
	_ = os.RemoveAll(w.LocalServingCertDir)
	w.LocalServingCertDir, w.LocalServingCAData = b.Dir, b.CAPEM
	if err := w.ModifyWebhookDefinitions(); err != nil {
		return err
	}
	for _, want := range w.MutatingWebhooks {
		var got admissionregistrationv1.MutatingWebhookConfiguration
		if err := e.Client.Get(ctx, client.ObjectKeyFromObject(want), &got); err != nil {
			return err
		}
		got.Webhooks = want.Webhooks
		if err := e.Client.Update(ctx, &got); err != nil {
			return err
		}
	}
	for _, want := range w.ValidatingWebhooks {
		var got admissionregistrationv1.ValidatingWebhookConfiguration
		if err := e.Client.Get(ctx, client.ObjectKeyFromObject(want), &got); err != nil {
			return err
		}
		got.Webhooks = want.Webhooks
		if err := e.Client.Update(ctx, &got); err != nil {
			return err
		}
	}
	return nil
}
