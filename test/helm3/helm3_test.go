// Package helm3 tests charts/rrguard with Helm 3's Go SDK, as test/helm does with Helm 4's:
// Kubernaut's users run both. A module of its own, so Helm 3's dependencies stay out of
// rrguard's go.mod and test/helm's.
package helm3

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/yaml"

	"github.com/rrguard/rrguard/test/cmenv"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(cmenv.Main(m, &env)) }

const (
	releaseName = "rrguard"
	releaseNS   = "rrguard-system"
)

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(filepath.Join(env.Root, "charts", "rrguard"))
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func values(t *testing.T, s string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// template is `helm template` with Helm 3; kubeVersion "" leaves Helm's own default.
func template(t *testing.T, kubeVersion string, vals map[string]any) (string, error) {
	t.Helper()
	in := action.NewInstall(&action.Configuration{})
	in.DryRun, in.ClientOnly, in.Replace = true, true, true
	in.ReleaseName, in.Namespace = releaseName, releaseNS
	if kubeVersion != "" {
		kv, err := chartutil.ParseKubeVersion(kubeVersion)
		if err != nil {
			t.Fatal(err)
		}
		in.KubeVersion = kv
	}
	r, err := in.RunWithContext(context.Background(), loadChart(t), vals)
	if err != nil {
		return "", err
	}
	return r.Manifest, nil
}

func TestLint(t *testing.T) {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = releaseNS
	kv, err := chartutil.ParseKubeVersion("v1.37.2")
	if err != nil {
		t.Fatal(err)
	}
	l.KubeVersion = kv
	res := l.Run([]string{filepath.Join(env.Root, "charts", "rrguard")}, nil)
	if len(res.Errors) > 0 {
		t.Fatalf("helm lint --strict (Helm 3): %v", res.Errors)
	}
}

// The tested range, as Helm 3 reads it; and offline without --kube-version, Helm 3 assumes
// v1.20.0, which the chart refuses with the message the README quotes.
func TestKubeVersionRange(t *testing.T) {
	for _, c := range []struct {
		v  string
		ok bool
	}{{"v1.31.9", false}, {"v1.32.0", true}, {"v1.35.4", true}, {"v1.37.2", true}, {"v1.38.0", false}} {
		_, err := template(t, c.v, nil)
		switch {
		case c.ok && err != nil:
			t.Errorf("Kubernetes %s: %v", c.v, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "incompatible with Kubernetes "+c.v)):
			t.Errorf("Kubernetes %s: %v, want the chart refusing it", c.v, err)
		}
	}
	_, err := template(t, "", nil)
	if err == nil || !strings.Contains(err.Error(), "chart requires kubeVersion: >=1.32.0-0 <1.38.0-0 which is incompatible with Kubernetes v1.20.0") {
		t.Fatalf("helm template without --kube-version: %v", err)
	}
}

// Install, upgrade and uninstall with Helm 3 on the real API server (cert-manager's and
// prometheus-operator's CRDs installed, so every object is checked by its real schema). The
// post-delete Job is test/helm's to run as a kubelet would; here it is off.
func TestInstallUpgradeUninstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubeconfig := env.Kubeconfig(t)
	rrNS, err := env.Namespace(ctx, "helm3-rrs")
	if err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(true)
	ns := releaseNS
	flags.KubeConfig, flags.Namespace = &kubeconfig, &ns
	cfg := &action.Configuration{}
	if err := cfg.Init(flags, releaseNS, "secret", t.Logf); err != nil {
		t.Fatal(err)
	}
	base := "rrNamespaces: [" + rrNS + "]\nimage: {tag: dev}\nreleaseOnUninstall: false\n"
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace, in.Timeout = releaseName, releaseNS, true, 2*time.Minute
	if _, err := in.RunWithContext(ctx, loadChart(t), values(t, base)); err != nil {
		t.Fatalf("helm install (Helm 3): %v", err)
	}
	var dep appsv1.Deployment
	depKey := types.NamespacedName{Namespace: releaseNS, Name: "rrguard-controller-manager"}
	if err := env.Client.Get(ctx, depKey, &dep); err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, types.NamespacedName{Name: "rrguard-mutating-webhook-configuration"}, &mwc); err != nil {
		t.Fatal(err)
	}
	up := action.NewUpgrade(cfg)
	up.Namespace, up.Timeout = releaseNS, 2*time.Minute
	if _, err := up.RunWithContext(ctx, releaseName, loadChart(t), values(t, base+"replicaCount: 4\n")); err != nil {
		t.Fatalf("helm upgrade (Helm 3): %v", err)
	}
	if err := env.Client.Get(ctx, depKey, &dep); err != nil || *dep.Spec.Replicas != 4 {
		t.Fatalf("after the upgrade: %v replicas, %v", dep.Spec.Replicas, err)
	}
	un := action.NewUninstall(cfg)
	un.Timeout = 2 * time.Minute
	if _, err := un.Run(releaseName); err != nil {
		t.Fatalf("helm uninstall (Helm 3): %v", err)
	}
	for _, get := range []func() error{
		func() error { return env.Client.Get(ctx, depKey, &appsv1.Deployment{}) },
		func() error {
			return env.Client.Get(ctx, types.NamespacedName{Name: mwc.Name}, &admissionregistrationv1.MutatingWebhookConfiguration{})
		},
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("after uninstall: %v, want gone", err)
		}
	}
}
