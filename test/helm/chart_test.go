// Package helm tests charts/rrguard with Helm's own Go SDK (no helm binary): lint, the values
// schema, the rendered objects against config/default's object by object, and install, upgrade and
// uninstall against a real API server that knows cert-manager's and prometheus-operator's CRDs,
// with cert-manager's controllers issuing and injecting the chart's certificates.
package helm

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/rrguard/rrguard/test/cmenv"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(cmenv.Main(m, &env))
}

const (
	releaseName = "rrguard"
	releaseNS   = "rrguard-system"
)

func chartDir() string { return filepath.Join(env.Root, "charts", "rrguard") }

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir())
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// values parses YAML into chart values, as `helm install -f` does.
func values(t *testing.T, s string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

var kubeVersion = &common.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}

// renderChart is `helm template`: the release's manifest and hooks, without a cluster.
func renderChart(ch *chart.Chart, name, namespace string, vals map[string]any) (*release.Release, error) {
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy = action.DryRunClient
	in.ReleaseName, in.Namespace = name, namespace
	in.Replace = true
	in.KubeVersion = kubeVersion
	r, err := in.RunWithContext(context.Background(), ch, vals)
	if err != nil {
		return nil, err
	}
	return r.(*release.Release), nil
}

// rendered is what a release installs: the manifest's objects, and the hooks' apart.
type rendered struct {
	objects, hooks []*unstructured.Unstructured
}

func mustRender(t *testing.T, name, namespace string, vals map[string]any) rendered {
	t.Helper()
	rel, err := renderChart(loadChart(t), name, namespace, vals)
	if err != nil {
		t.Fatal(err)
	}
	return split(t, rel)
}

func split(t *testing.T, rel *release.Release) rendered {
	t.Helper()
	var r rendered
	var err error
	if r.objects, err = testenv.Objects([]byte(rel.Manifest)); err != nil {
		t.Fatal(err)
	}
	for _, h := range rel.Hooks {
		objs, err := testenv.Objects([]byte(h.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		r.hooks = append(r.hooks, objs...)
	}
	return r
}

// crdObjects are the chart's crds/.
func crdObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, crd := range loadChart(t).CRDObjects() {
		objs, err := testenv.Objects(crd.File.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, objs...)
	}
	return out
}

func key(u *unstructured.Unstructured) string {
	return u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	return nil
}

func kinds(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, u := range objs {
		out = append(out, key(u))
	}
	slices.Sort(out)
	return out
}

func TestLint(t *testing.T) {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = releaseNS
	l.KubeVersion = kubeVersion
	for name, vals := range map[string]map[string]any{
		"defaults":            nil,
		"check webhook":       values(t, "nameCheck: webhook"),
		"existing issuer":     values(t, "certificate: {issuerRef: {kind: ClusterIssuer, name: corp-ca}}"),
		"everything optional": values(t, "serviceMonitor: {enabled: false}\nprometheusRule: {enabled: false}\ndashboard: {enabled: false}\nnetworkPolicy: {enabled: false}\nreleaseOnUninstall: false"),
	} {
		res := l.Run([]string{chartDir()}, vals)
		if len(res.Errors) > 0 {
			t.Errorf("%s: helm lint --strict: %v", name, res.Errors)
		}
		for _, m := range res.Messages {
			t.Logf("%s: %s", name, m)
		}
	}
}

// Bad values are refused before anything reaches the cluster, each with a message that names the
// value and what it must be.
func TestValuesSchemaRejects(t *testing.T) {
	ch := loadChart(t)
	for _, c := range []struct{ vals, want string }{
		{"rrNamespaces: []", "/rrNamespaces"},
		{"rrNamespaces: [Kubernaut_System]", "/rrNamespaces/0"},
		{"replicaCount: 1", "/replicaCount"},
		{"replicaCount: three", "/replicaCount"},
		{"replicas: 3", "additional properties 'replicas'"},
		{"image: {repository: rrguard, digest: latest}", "/image/digest"},
		{"image: {repository: ''}", "/image/repository"},
		{"nameCheck: cel", "/nameCheck"},
		{"certificate: {issuerRef: {kind: Secret, name: x}}", "/certificate/issuerRef/kind"},
		{"certificate: {issuerRef: {name: corp-ca}}", "kind"},
		{"certificate: {duration: 90d}", "/certificate/duration"},
		{"resources: {limits: {memory: null}}", "/resources/limits"},
		{"goMemLimit: 200M", "/goMemLimit"},
		{"serviceMonitor: {labels: {release: 1}}", "/serviceMonitor/labels/release"},
		{"fullnameOverride: a-name-longer-than-twenty-eight", "/fullnameOverride"},
		{"policyTargets: [{apiGroup: tekton.dev}]", "resource"},
		{"policyTargets: [{apiGroup: tekton.dev, resource: PipelineRuns}]", "/policyTargets/0/resource"},
		// Not expressible in the schema: the template refuses it.
		{"replicaCount: 2\npodDisruptionBudget: {minAvailable: 2}", "replicaCount (2) must be above podDisruptionBudget.minAvailable (2)"},
	} {
		_, err := renderChart(ch, releaseName, releaseNS, values(t, c.vals))
		if err == nil {
			t.Errorf("values %q: rendered, want refused", c.vals)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %q: error does not name %q:\n%v", c.vals, c.want, err)
		}
	}
}

// Helm adds these to every object; config/default has no equivalent.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"}

var clusterScoped = map[string]bool{
	"ClusterRole": true, "ClusterRoleBinding": true, "MutatingWebhookConfiguration": true,
	"ValidatingWebhookConfiguration": true, "ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
}

// normalize drops what differs by install path only: Helm's labels, and the namespace kustomize
// puts on cluster-scoped kinds it does not know (the API server ignores it).
func normalize(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	out := map[string]*unstructured.Unstructured{}
	for _, u := range objs {
		u = u.DeepCopy()
		if clusterScoped[u.GetKind()] {
			u.SetNamespace("")
		}
		labels := u.GetLabels()
		for _, l := range helmLabels {
			delete(labels, l)
		}
		u.SetLabels(labels)
		out[key(u)] = u
	}
	return out
}

// The chart and config/default install the same objects: the chart with release name rrguard in
// rrguard-system against config/default as shipped, and with nameCheck: webhook against
// config/default with its validating-webhook component. The one object only kustomize has is the
// Namespace (a chart installs into --namespace ... --create-namespace).
func TestChartMatchesConfigDefault(t *testing.T) {
	withCheck, err := testenv.KustomizeWithCheckWebhook(env.Root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	plain, err := testenv.Kustomize(env.Root, "config/default")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		vals      string
		kustomize []byte
	}{
		{"policy", "image: {tag: dev}", plain},
		{"check webhook", "image: {tag: dev}\nnameCheck: webhook", withCheck},
	} {
		t.Run(c.name, func(t *testing.T) {
			want, err := testenv.Objects(c.kustomize)
			if err != nil {
				t.Fatal(err)
			}
			if find(want, "Namespace", releaseNS) == nil {
				t.Fatalf("config/default no longer creates Namespace %s: %v", releaseNS, kinds(want))
			}
			want = slices.DeleteFunc(want, func(u *unstructured.Unstructured) bool { return u.GetKind() == "Namespace" })
			// Helm installs crds/ as they are (not templates, never upgraded): compared as well.
			got := append(mustRender(t, releaseName, releaseNS, values(t, c.vals)).objects, crdObjects(t)...)
			g, w := normalize(got), normalize(want)
			if gk, wk := slices.Sorted(maps.Keys(g)), slices.Sorted(maps.Keys(w)); !slices.Equal(gk, wk) {
				t.Fatalf("objects differ:\nchart:     %v\nkustomize: %v", gk, wk)
			}
			for k, wu := range w {
				if d := cmp.Diff(wu.Object, g[k].Object); d != "" {
					t.Errorf("%s differs (-config/default +chart):\n%s", k, d)
				}
			}
		})
	}
}

// The serving certificate must name the Service the webhook configurations call, and cainjector
// must be pointed at that certificate: a wrong SAN is an outage with failurePolicy Fail. Checked
// for several release names and namespaces, and for both checks.
func TestChartCertificateNamesTheWebhookService(t *testing.T) {
	for _, c := range []struct{ release, namespace, vals string }{
		{"rrguard", "rrguard-system", ""},
		{"guard", "platform", "nameCheck: webhook"},
		{"rrguard-prod", "ops", "fullnameOverride: dedup"},
		{"x", "y", "certificate: {issuerRef: {kind: ClusterIssuer, name: corp-ca}}"},
	} {
		r := mustRender(t, c.release, c.namespace, values(t, c.vals))
		var svc, cert *unstructured.Unstructured
		for _, u := range r.objects {
			switch {
			case u.GetKind() == "Service" && strings.HasSuffix(u.GetName(), "-webhook-service"):
				svc = u
			case u.GetKind() == "Certificate" && strings.HasSuffix(u.GetName(), "-serving-cert"):
				cert = u
			}
		}
		if svc == nil || cert == nil {
			t.Fatalf("%s/%s: no webhook Service or serving Certificate in %v", c.namespace, c.release, kinds(r.objects))
		}
		if svc.GetNamespace() != c.namespace || cert.GetNamespace() != c.namespace {
			t.Errorf("%s/%s: Service in %q, Certificate in %q", c.namespace, c.release, svc.GetNamespace(), cert.GetNamespace())
		}
		host := svc.GetName() + "." + svc.GetNamespace() + ".svc"
		dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
		if !slices.Equal(dns, []string{host, host + ".cluster.local"}) {
			t.Errorf("%s/%s: Certificate dnsNames %v, want the Service's %s", c.namespace, c.release, dns, host)
		}
		configs := 0
		for _, u := range r.objects {
			if !strings.HasSuffix(u.GetKind(), "WebhookConfiguration") {
				continue
			}
			configs++
			if got, want := u.GetAnnotations()["cert-manager.io/inject-ca-from"], cert.GetNamespace()+"/"+cert.GetName(); got != want {
				t.Errorf("%s: inject-ca-from %q, want %q", u.GetName(), got, want)
			}
			hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
			for _, h := range hooks {
				s, _, _ := unstructured.NestedStringMap(h.(map[string]any), "clientConfig", "service")
				if s["name"] != svc.GetName() || s["namespace"] != svc.GetNamespace() {
					t.Errorf("%s calls Service %s/%s, want %s/%s", u.GetName(), s["namespace"], s["name"], svc.GetNamespace(), svc.GetName())
				}
			}
		}
		// The RR's mutating one (and validating, with nameCheck: webhook) and the policies' pair.
		if want := 3 + strings.Count(c.vals, "nameCheck: webhook"); configs != want {
			t.Errorf("%s/%s: %d webhook configurations, want %d", c.namespace, c.release, configs, want)
		}
	}
}

// Each policy target gets its rule in the policies' ClusterRole, and nothing else does.
func TestChartPolicyTargets(t *testing.T) {
	r := mustRender(t, releaseName, releaseNS, values(t, "policyTargets: [{apiGroup: tekton.dev, resource: pipelineruns}, {apiGroup: batch, resource: jobs}]"))
	cr := find(r.objects, "ClusterRole", "rrguard-policies-role")
	if cr == nil {
		t.Fatal("no ClusterRole rrguard-policies-role")
	}
	rules, _, _ := unstructured.NestedSlice(cr.Object, "rules")
	var got []string
	for _, x := range rules {
		m := x.(map[string]any)
		if fmt.Sprint(m["verbs"]) == "[get list watch update patch]" {
			got = append(got, fmt.Sprint(m["apiGroups"], m["resources"]))
		}
	}
	if want := []string{"[tekton.dev] [pipelineruns]", "[batch] [jobs]"}; !slices.Equal(got, want) {
		t.Fatalf("target rules %v, want %v", got, want)
	}
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		if find(r.objects, kind, "rrguard-policies") == nil {
			t.Errorf("no %s rrguard-policies", kind)
		}
	}
	dep := find(r.objects, "Deployment", "rrguard-controller-manager")
	args, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if s := fmt.Sprint(args); !strings.Contains(s, "--policies-webhook-configuration=rrguard-policies") || !strings.Contains(s, "--webhook-service=rrguard-webhook-service") {
		t.Errorf("the Deployment does not name the policies' webhook configurations and the Service they call: %s", s)
	}
}

// Each value reaches the objects it is for.
func TestChartValues(t *testing.T) {
	r := mustRender(t, releaseName, releaseNS, values(t, `
rrNamespaces: [kubernaut-system, kubernaut-staging]
image: {repository: registry.example:5000/rrguard, tag: v1.2.3, digest: "sha256:`+strings.Repeat("ab", 32)+`"}
certificate: {issuerRef: {kind: ClusterIssuer, name: corp-ca, group: cert-manager.io}}
serviceMonitor: {labels: {release: kube-prometheus-stack}, interval: 30s}
prometheusRule: {labels: {release: kube-prometheus-stack}}
dashboard: {namespace: monitoring}
priorityClassName: system-cluster-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Exists}]
networkPolicy: {enabled: false}
metrics: {secure: false}
`))
	dep := find(r.objects, "Deployment", "rrguard-controller-manager")
	if dep == nil {
		t.Fatalf("no Deployment in %v", kinds(r.objects))
	}
	ctr, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	manager := ctr[0].(map[string]any)
	if img, want := manager["image"], "registry.example:5000/rrguard:v1.2.3@sha256:"+strings.Repeat("ab", 32); img != want {
		t.Errorf("image %v, want %s", img, want)
	}
	envs, _, _ := unstructured.NestedSlice(manager, "env")
	if got := envs[0].(map[string]any); got["name"] != "RR_NAMESPACES" || got["value"] != "kubernaut-system,kubernaut-staging" {
		t.Errorf("first env %v, want RR_NAMESPACES=kubernaut-system,kubernaut-staging", got)
	}
	if args, _, _ := unstructured.NestedStringSlice(manager, "args"); !slices.Contains(args, "--metrics-secure=false") {
		t.Errorf("args %v lack --metrics-secure=false", args)
	}
	for path, want := range map[string]any{
		"priorityClassName":            "system-cluster-critical",
		"nodeSelector":                 map[string]any{"kubernetes.io/os": "linux"},
		"tolerations":                  []any{map[string]any{"key": "dedicated", "operator": "Exists"}},
		"serviceAccountName":           "rrguard-controller-manager",
		"securityContext.runAsNonRoot": true,
	} {
		got, _, _ := unstructured.NestedFieldNoCopy(dep.Object, append([]string{"spec", "template", "spec"}, strings.Split(path, ".")...)...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("pod %s = %v, want %v", path, got, want)
		}
	}
	for _, ns := range []string{"kubernaut-system", "kubernaut-staging"} {
		for _, kind := range []string{"Role", "RoleBinding"} {
			found := false
			for _, u := range r.objects {
				found = found || (u.GetKind() == kind && u.GetNamespace() == ns && strings.HasPrefix(u.GetName(), "rrguard-rr-role"))
			}
			if !found {
				t.Errorf("no rrguard %s in %s", kind, ns)
			}
		}
	}
	for _, name := range []string{"rrguard-selfsigned-issuer", "rrguard-ca-issuer"} {
		if find(r.objects, "Issuer", name) != nil {
			t.Errorf("Issuer %s rendered although certificate.issuerRef names an existing issuer", name)
		}
	}
	if find(r.objects, "Certificate", "rrguard-ca") != nil {
		t.Error("CA Certificate rendered although certificate.issuerRef names an existing issuer")
	}
	cert := find(r.objects, "Certificate", "rrguard-serving-cert")
	if ref, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef"); !maps.Equal(ref, map[string]string{"kind": "ClusterIssuer", "name": "corp-ca", "group": "cert-manager.io"}) {
		t.Errorf("serving Certificate issuerRef %v", ref)
	}
	for kind, name := range map[string]string{"ServiceMonitor": "rrguard-controller-manager-metrics-monitor", "PrometheusRule": "rrguard-alerts"} {
		if u := find(r.objects, kind, name); u == nil || u.GetLabels()["release"] != "kube-prometheus-stack" {
			t.Errorf("%s %s without label release=kube-prometheus-stack: %v", kind, name, u)
		}
	}
	sm := find(r.objects, "ServiceMonitor", "rrguard-controller-manager-metrics-monitor")
	if eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints"); eps[0].(map[string]any)["scheme"] != "http" || eps[0].(map[string]any)["interval"] != "30s" {
		t.Errorf("ServiceMonitor endpoint %v, want scheme http (metrics.secure false) and interval 30s", eps[0])
	}
	if dash := find(r.objects, "ConfigMap", "rrguard-grafana-dashboard"); dash == nil || dash.GetNamespace() != "monitoring" {
		t.Errorf("dashboard ConfigMap not in namespace monitoring: %v", dash)
	}
	for _, u := range r.objects {
		if u.GetKind() == "NetworkPolicy" {
			t.Errorf("NetworkPolicy %s rendered with networkPolicy.enabled false", u.GetName())
		}
	}

	off := mustRender(t, releaseName, releaseNS, values(t, "serviceMonitor: {enabled: false}\nprometheusRule: {enabled: false}\ndashboard: {enabled: false}\nreleaseOnUninstall: false"))
	for _, u := range off.objects {
		switch u.GetKind() {
		case "ServiceMonitor", "PrometheusRule", "ConfigMap":
			t.Errorf("%s rendered although disabled", key(u))
		}
	}
	if len(off.hooks) != 0 {
		t.Errorf("hooks rendered with releaseOnUninstall false: %v", kinds(off.hooks))
	}
}

// The chart installs on the tested releases only, and says so when rendered offline: without
// --kube-version Helm assumes a release of its own choosing, which the range may refuse.
func TestKubeVersionRange(t *testing.T) {
	ch := loadChart(t)
	for _, c := range []struct {
		v  string
		ok bool
	}{{"v1.31.9", false}, {"v1.32.0", true}, {"v1.34.4", true}, {"v1.37.2", true}, {"v1.38.0", false}} {
		in := action.NewInstall(action.NewConfiguration())
		in.DryRunStrategy, in.ReleaseName, in.Namespace, in.Replace = action.DryRunClient, releaseName, releaseNS, true
		kv, err := common.ParseKubeVersion(c.v)
		if err != nil {
			t.Fatal(err)
		}
		in.KubeVersion = kv
		_, err = in.RunWithContext(context.Background(), ch, nil)
		switch {
		case c.ok && err != nil:
			t.Errorf("Kubernetes %s: %v", c.v, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "incompatible with Kubernetes "+c.v)):
			t.Errorf("Kubernetes %s: %v, want the chart refusing it", c.v, err)
		}
	}
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy, in.ReleaseName, in.Namespace, in.Replace = action.DryRunClient, releaseName, releaseNS, true
	// Without a cluster or --kube-version, Helm 4 assumes v1.20.0, as Helm 3 does (test/helm3).
	_, err := in.RunWithContext(context.Background(), ch, nil)
	if err == nil || !strings.Contains(err.Error(), "chart requires kubeVersion: >=1.32.0-0 <1.38.0-0 which is incompatible with Kubernetes v1.20.0") {
		t.Fatalf("helm template without --kube-version (Helm 4): %v", err)
	}
}

// With the RR policy off, for a cluster without Kubernaut, the chart renders nothing of the RR's:
// no RR webhook, name-check policy or Role (hooks included), and rrguard and its release hook are
// told to enforce no built-in policy. Every other object is still there.
func TestChartWithoutKubernaut(t *testing.T) {
	with := mustRender(t, releaseName, releaseNS, values(t, ""))
	without := mustRender(t, releaseName, releaseNS, values(t, "builtinPolicies: []\npolicyTargets: [{apiGroup: tekton.dev, resource: pipelineruns}]"))
	keys := func(objs []*unstructured.Unstructured) []string {
		var out []string
		for _, u := range objs {
			out = append(out, key(u))
		}
		return out
	}
	dropped := func(a, b []*unstructured.Unstructured) []string {
		var out []string
		for _, k := range keys(a) {
			if !slices.Contains(keys(b), k) {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	want := []string{
		"MutatingWebhookConfiguration /rrguard-mutating-webhook-configuration",
		"Role kubernaut-system/rrguard-rr-role",
		"RoleBinding kubernaut-system/rrguard-rr-rolebinding",
		"ValidatingAdmissionPolicy /rrguard-name-check",
		"ValidatingAdmissionPolicyBinding /rrguard-name-check",
	}
	if got := dropped(with.objects, without.objects); !slices.Equal(got, want) {
		t.Errorf("objects dropped with builtinPolicies []: %v, want the RR's %v", got, want)
	}
	if got, want := dropped(with.hooks, without.hooks), []string{"Role kubernaut-system/rrguard-release", "RoleBinding kubernaut-system/rrguard-release"}; !slices.Equal(got, want) {
		t.Errorf("hooks dropped with builtinPolicies []: %v, want the RR's %v", got, want)
	}
	for _, u := range append(without.objects, without.hooks...) {
		b, err := u.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case u.GetKind() == "Deployment" || u.GetKind() == "Job":
			containers, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			if s := fmt.Sprint(containers); !strings.Contains(s, "--builtin-policies= ") && !strings.Contains(s, "--builtin-policies=]") {
				t.Errorf("%s does not disable the built-in policies: %s", key(u), s)
			}
		case u.GetKind() == "PrometheusRule":
			// rrguard's alerts still speak of RRs in their text (issue 25, part 7: per policy).
		case strings.Contains(strings.ToLower(string(b)), "remediationrequest"):
			t.Errorf("with builtinPolicies [] the chart renders %s, which names RemediationRequests", key(u))
		}
	}
}
