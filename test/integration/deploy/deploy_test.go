// Package deploy checks config/default, the install a platform team applies: rendered by
// kubectl's own kustomize, applied server-side to a real API server that knows cert-manager's and
// prometheus-operator's CRDs, so every object is validated by a real schema; and held to the
// production settings the webhook's availability depends on.
package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/test/cmenv"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(cmenv.Main(m, &env))
}

// renderWithCheckWebhook renders config/default with the validating-webhook component uncommented.
func renderWithCheckWebhook(t *testing.T) []byte {
	t.Helper()
	out, err := testenv.KustomizeWithCheckWebhook(env.Root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func render(t *testing.T, dir string) []byte {
	t.Helper()
	out, err := testenv.Kustomize(env.Root, dir)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func objects(t *testing.T, rendered []byte) []*unstructured.Unstructured {
	t.Helper()
	objs, err := testenv.Objects(rendered)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestDefaultAppliesServerSide(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubeconfig := env.Kubeconfig(t)
	// Kubernaut's namespace exists before rrguard is installed: rrguard's RR Role lives there.
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubernaut-system"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// Both installs: with the validating webhook (applied first, then replaced by the default's
	// objects, which the checks below look up).
	for _, rendered := range [][]byte{renderWithCheckWebhook(t), render(t, "config/default")} {
		if out, err := testenv.Kubectl(ctx, kubeconfig, rendered, "apply", "--server-side", "--field-manager=rrguard-install", "-f", "-"); err != nil {
			t.Fatalf("server-side apply: %v\n%s", err, out)
		}
	}
	rendered := render(t, "config/default")
	objs := objects(t, rendered)
	if len(objs) < 15 {
		t.Fatalf("config/default rendered only %d objects", len(objs))
	}
	kinds := map[string]bool{}
	for _, o := range objs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(o.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(o), got); err != nil {
			t.Errorf("%s %s not stored: %v", o.GetKind(), o.GetName(), err)
		}
		kinds[o.GetKind()] = true
	}
	for _, k := range []string{"Deployment", "PodDisruptionBudget", "Service", "ServiceAccount", "Role", "RoleBinding",
		"MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Issuer", "Certificate", "ServiceMonitor",
		"PrometheusRule", "NetworkPolicy", "ConfigMap"} {
		if !kinds[k] {
			t.Errorf("config/default has no %s", k)
		}
	}
}

// decodeAs decodes the rendered object of the given kind whose name ends in nameSuffix.
func decodeAs(t *testing.T, objs []*unstructured.Unstructured, kind, nameSuffix string, out any) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && strings.HasSuffix(o.GetName(), nameSuffix) {
			b, err := o.MarshalJSON()
			if err == nil {
				err = json.Unmarshal(b, out)
			}
			if err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("config/default has no %s named *%s", kind, nameSuffix)
}

// The settings rrguard's availability and safety rest on, as rendered for a cluster.
func TestDefaultProductionSettings(t *testing.T) {
	objs := objects(t, render(t, "config/default"))

	var mut admissionregistrationv1.MutatingWebhookConfiguration
	var val admissionregistrationv1.ValidatingWebhookConfiguration
	decodeAs(t, objs, "MutatingWebhookConfiguration", "mutating-webhook-configuration", &mut)
	// The check: the CEL policy by default, bound with Deny, failing closed; the validating
	// webhook only with the component, which then replaces the policy.
	var policy admissionregistrationv1.ValidatingAdmissionPolicy
	var policyBinding admissionregistrationv1.ValidatingAdmissionPolicyBinding
	decodeAs(t, objs, "ValidatingAdmissionPolicy", "name-check", &policy)
	decodeAs(t, objs, "ValidatingAdmissionPolicyBinding", "name-check", &policyBinding)
	if policyBinding.Spec.PolicyName != policy.Name || !slices.Equal(policyBinding.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) ||
		policy.Spec.FailurePolicy == nil || *policy.Spec.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("policy %s (failurePolicy %v) bound by %+v", policy.Name, policy.Spec.FailurePolicy, policyBinding.Spec)
	}
	for _, o := range objs {
		// rrguard-policies is the policies' pair (installed empty; rrguard keeps it in step).
		if o.GetKind() == "ValidatingWebhookConfiguration" && o.GetName() != "rrguard-policies" {
			t.Errorf("config/default has a ValidatingWebhookConfiguration %s beside the policy", o.GetName())
		}
	}
	withWebhook := objects(t, renderWithCheckWebhook(t))
	decodeAs(t, withWebhook, "ValidatingWebhookConfiguration", "validating-webhook-configuration", &val)
	for _, o := range withWebhook {
		if k := o.GetKind(); k == "ValidatingAdmissionPolicy" || k == "ValidatingAdmissionPolicyBinding" {
			t.Errorf("with the validating-webhook component, %s %s is still there", k, o.GetName())
		}
	}
	var svc corev1.Service
	decodeAs(t, objs, "Service", "webhook-service", &svc)
	// Names carry config/default's prefix once.
	for _, o := range append(slices.Clone(objs), withWebhook...) {
		if strings.HasPrefix(o.GetName(), "rrguard-rrguard-") {
			t.Errorf("%s %s carries the name prefix twice", o.GetKind(), o.GetName())
		}
	}
	if mut.Name != "rrguard-mutating-webhook-configuration" || val.Name != "rrguard-validating-webhook-configuration" {
		t.Errorf("webhook configurations named %q and %q", mut.Name, val.Name)
	}
	// The serving certificate must name the Service the configurations call: a wrong SAN fails
	// every TLS handshake, and with failurePolicy Fail every RR create.
	var cert struct {
		Spec struct {
			DNSNames   []string `json:"dnsNames"`
			SecretName string   `json:"secretName"`
		} `json:"spec"`
	}
	decodeAs(t, objs, "Certificate", "serving-cert", &cert)
	if want := []string{svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace + ".svc.cluster.local"}; !slices.Equal(cert.Spec.DNSNames, want) {
		t.Errorf("serving certificate dnsNames %v, want %v (the webhook Service)", cert.Spec.DNSNames, want)
	}
	check := func(name string, annotations map[string]string, failure *admissionregistrationv1.FailurePolicyType,
		timeout *int32, side *admissionregistrationv1.SideEffectClass, match *admissionregistrationv1.MatchPolicyType,
		versions []string, rules []admissionregistrationv1.RuleWithOperations, cc admissionregistrationv1.WebhookClientConfig) {
		t.Helper()
		if annotations["cert-manager.io/inject-ca-from"] != "rrguard-system/rrguard-serving-cert" {
			t.Errorf("%s: inject-ca-from = %q", name, annotations["cert-manager.io/inject-ca-from"])
		}
		if failure == nil || *failure != admissionregistrationv1.Fail {
			t.Errorf("%s: failurePolicy must be Fail", name)
		}
		if timeout == nil || *timeout > 5 {
			t.Errorf("%s: timeoutSeconds must be at most 5", name)
		}
		if side == nil || *side != admissionregistrationv1.SideEffectClassNone {
			t.Errorf("%s: sideEffects must be None", name)
		}
		if match == nil || *match != admissionregistrationv1.Equivalent {
			t.Errorf("%s: matchPolicy must be Equivalent", name)
		}
		if len(versions) != 1 || versions[0] != "v1" {
			t.Errorf("%s: admissionReviewVersions = %v", name, versions)
		}
		if len(rules) != 1 || len(rules[0].Operations) != 1 || rules[0].Operations[0] != admissionregistrationv1.Create ||
			len(rules[0].Resources) != 1 || rules[0].Resources[0] != "remediationrequests" ||
			len(rules[0].APIGroups) != 1 || rules[0].APIGroups[0] != "kubernaut.ai" {
			t.Errorf("%s: rules must be CREATE of kubernaut.ai remediationrequests only: %+v", name, rules)
		}
		if cc.Service == nil || cc.Service.Name != svc.Name || cc.Service.Namespace != svc.Namespace {
			t.Errorf("%s: clientConfig does not name the webhook Service %s/%s", name, svc.Namespace, svc.Name)
		}
	}
	for _, w := range mut.Webhooks {
		check(w.Name, mut.Annotations, w.FailurePolicy, w.TimeoutSeconds, w.SideEffects, w.MatchPolicy, w.AdmissionReviewVersions, w.Rules, w.ClientConfig)
	}
	for _, w := range val.Webhooks {
		check(w.Name, val.Annotations, w.FailurePolicy, w.TimeoutSeconds, w.SideEffects, w.MatchPolicy, w.AdmissionReviewVersions, w.Rules, w.ClientConfig)
	}

	var dep appsv1.Deployment
	decodeAs(t, objs, "Deployment", "controller-manager", &dep)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("replicas = %v, want 3", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.TopologySpreadConstraints) == 0 || pod.TopologySpreadConstraints[0].TopologyKey != "kubernetes.io/hostname" {
		t.Error("no topology spread across nodes")
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod must run as non-root with seccomp RuntimeDefault")
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Error("container must have a read-only root, no privilege escalation, and drop ALL capabilities")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Fatal("readiness /readyz and liveness /healthz probes required")
	}
	// A probe slowed by a storm on every replica at once must not empty the Service.
	if p := c.ReadinessProbe; p.FailureThreshold < 3 || p.TimeoutSeconds < 3 || p.PeriodSeconds*p.FailureThreshold < 10 {
		t.Errorf("readiness probe fails a replica after %d probes %d s apart with a %d s timeout; want at least 3, 10 s in all, 3 s",
			p.FailureThreshold, p.PeriodSeconds, p.TimeoutSeconds)
	}
	mounted := false
	for _, v := range pod.Volumes {
		mounted = mounted || (v.Secret != nil && v.Secret.SecretName == cert.Spec.SecretName)
	}
	if !mounted {
		t.Errorf("no volume mounts the serving certificate's Secret %q", cert.Spec.SecretName)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("resource requests and limits required")
	}
	// GOMEMLIMIT makes the Go runtime collect harder before the container's limit, not after.
	var memLimit string
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			memLimit = e.Value
		}
	}
	if q, err := resource.ParseQuantity(strings.TrimSuffix(memLimit, "B")); err != nil || q.Cmp(*c.Resources.Limits.Memory()) >= 0 ||
		c.Resources.Requests.Memory().Cmp(q) > 0 {
		t.Errorf("GOMEMLIMIT %q must lie between the memory request %s and the limit %s", memLimit,
			c.Resources.Requests.Memory(), c.Resources.Limits.Memory())
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--shutdown-delay=") {
		t.Error("no shutdown delay")
	}
	var pdb policyv1.PodDisruptionBudget
	decodeAs(t, objs, "PodDisruptionBudget", "controller-manager", &pdb)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 2 {
		t.Errorf("PDB minAvailable = %v, want 2", pdb.Spec.MinAvailable)
	}

	// RRs: a Role in the namespace rrguard judges, bound to rrguard's ServiceAccount; nothing
	// cluster-wide.
	var role rbacv1.Role
	decodeAs(t, objs, "Role", "rr-role", &role)
	var binding rbacv1.RoleBinding
	decodeAs(t, objs, "RoleBinding", "rr-rolebinding", &binding)
	if role.Namespace != "kubernaut-system" || binding.Namespace != role.Namespace || binding.RoleRef.Name != role.Name ||
		len(binding.Subjects) != 1 || binding.Subjects[0].Name != "rrguard-controller-manager" || binding.Subjects[0].Namespace != "rrguard-system" {
		t.Errorf("RR Role %s/%s bound by %s/%s to %+v", role.Namespace, role.Name, binding.Namespace, binding.Name, binding.Subjects)
	}
	// Cluster-wide: only what metrics authentication needs (the review APIs are cluster-scoped),
	// and the role a Prometheus is bound to for reading /metrics.
	for _, o := range objs {
		switch k, name := o.GetKind(), o.GetName(); {
		case k == "ClusterRole" && name == "rrguard-metrics-auth-role":
			var cr rbacv1.ClusterRole
			decodeAs(t, objs, k, name, &cr)
			want := []rbacv1.PolicyRule{
				{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
				{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
			}
			if fmt.Sprint(cr.Rules) != fmt.Sprint(want) {
				t.Errorf("%s grants %+v, want the token and access reviews only", name, cr.Rules)
			}
		case k == "ClusterRole" && name == "rrguard-metrics-reader":
			var cr rbacv1.ClusterRole
			decodeAs(t, objs, k, name, &cr)
			if len(cr.Rules) != 1 || fmt.Sprint(cr.Rules[0].NonResourceURLs, cr.Rules[0].Verbs, cr.Rules[0].Resources) != "[/metrics] [get] []" {
				t.Errorf("%s grants %+v, want GET /metrics only", name, cr.Rules)
			}
		case k == "ClusterRoleBinding" && name == "rrguard-metrics-auth-rolebinding":
			var b rbacv1.ClusterRoleBinding
			decodeAs(t, objs, k, name, &b)
			if b.RoleRef.Name != "rrguard-metrics-auth-role" || len(b.Subjects) != 1 || b.Subjects[0].Name != "rrguard-controller-manager" || b.Subjects[0].Namespace != "rrguard-system" {
				t.Errorf("%s binds %s to %+v", name, b.RoleRef.Name, b.Subjects)
			}
		case k == "ClusterRole" && name == "rrguard-policies-role":
			var cr rbacv1.ClusterRole
			decodeAs(t, objs, k, name, &cr)
			hooks := []string{"mutatingwebhookconfigurations", "validatingwebhookconfigurations"}
			want := []rbacv1.PolicyRule{
				{APIGroups: []string{"rrguard.kubernaut.ai"}, Resources: []string{"uniquenesspolicies"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"rrguard.kubernaut.ai"}, Resources: []string{"uniquenesspolicies/status"}, Verbs: []string{"get", "update", "patch"}},
				{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: hooks, Verbs: []string{"get", "list", "watch"}},
				// The policies' generated name checks, named after the policies.
				{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"validatingadmissionpolicies", "validatingadmissionpolicybindings"},
					Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
				{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: hooks, ResourceNames: []string{"rrguard-policies"}, Verbs: []string{"update"}},
			}
			if fmt.Sprint(cr.Rules) != fmt.Sprint(want) {
				t.Errorf("%s grants %+v, want reads of the policies and the webhook configurations, the policies' name checks, and updates of the policies' own pair of webhook configurations only", name, cr.Rules)
			}
		case k == "ClusterRoleBinding" && name == "rrguard-policies-rolebinding":
			var b rbacv1.ClusterRoleBinding
			decodeAs(t, objs, k, name, &b)
			if b.RoleRef.Name != "rrguard-policies-role" || len(b.Subjects) != 1 || b.Subjects[0].Name != "rrguard-controller-manager" || b.Subjects[0].Namespace != "rrguard-system" {
				t.Errorf("%s binds %s to %+v", name, b.RoleRef.Name, b.Subjects)
			}
		case k == "ClusterRole" || k == "ClusterRoleBinding":
			t.Errorf("cluster-wide RBAC: %s %s", k, name)
		}
	}
	// Metrics: HTTPS with authentication, and the ServiceMonitor sending its token.
	if !strings.Contains(strings.Join(c.Args, " "), "--metrics-bind-address=:8443") || strings.Contains(strings.Join(c.Args, " "), "--metrics-secure=false") {
		t.Errorf("metrics must be served securely on :8443: args %v", c.Args)
	}
	var mon struct {
		Spec struct {
			Endpoints []struct {
				Port, Scheme, BearerTokenFile string
			} `json:"endpoints"`
		} `json:"spec"`
	}
	decodeAs(t, objs, "ServiceMonitor", "metrics-monitor", &mon)
	// The dashboard, for Grafana's sidecar (test/alerts checks its queries).
	var dash corev1.ConfigMap
	decodeAs(t, objs, "ConfigMap", "grafana-dashboard", &dash)
	if dash.Labels["grafana_dashboard"] != "1" || !json.Valid([]byte(dash.Data["rrguard.json"])) {
		t.Errorf("dashboard ConfigMap %s: labels %v, rrguard.json valid JSON: %v", dash.Name, dash.Labels, json.Valid([]byte(dash.Data["rrguard.json"])))
	}
	if e := mon.Spec.Endpoints; len(e) != 1 || e[0].Scheme != "https" || e[0].BearerTokenFile == "" || e[0].Port != "https" {
		t.Errorf("ServiceMonitor endpoints %+v: want https with a bearer token", e)
	}
	for _, r := range role.Rules {
		for _, res := range r.Resources {
			if res == "secrets" || res == "*" {
				t.Errorf("RBAC grants %v on %s", r.Verbs, res)
			}
		}
		for _, v := range r.Verbs {
			// The only cluster-wide write: removing its own finalizer from RRs.
			if v != "get" && v != "list" && v != "watch" && !(slices.Equal(r.Resources, []string{"remediationrequests"}) && (v == "update" || v == "patch")) {
				t.Errorf("RBAC grants %s on %v: rrguard writes only its finalizer on RRs", v, r.Resources)
			}
		}
	}
	// The marks: ConfigMaps, in rrguard's own namespace only (a Role, not a ClusterRole).
	var marksRole rbacv1.Role
	decodeAs(t, objs, "Role", "marks-role", &marksRole)
	if marksRole.Namespace != "rrguard-system" || len(marksRole.Rules) != 1 || !slices.Equal(marksRole.Rules[0].Resources, []string{"configmaps"}) ||
		slices.Contains(marksRole.Rules[0].Verbs, "delete") || slices.Contains(marksRole.Rules[0].Verbs, "*") {
		t.Errorf("marks Role: %s %+v", marksRole.Namespace, marksRole.Rules)
	}
	var env corev1.EnvVar
	for _, e := range c.Env {
		if e.Name == "POD_NAMESPACE" {
			env = e
		}
	}
	if env.ValueFrom == nil || env.ValueFrom.FieldRef == nil || env.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE (the marks' namespace) not set from the downward API: %+v", env)
	}
	var rrNamespaces string
	for _, e := range c.Env {
		if e.Name == "RR_NAMESPACES" {
			rrNamespaces = e.Value
		}
	}
	if rrNamespaces != role.Namespace {
		t.Errorf("RR_NAMESPACES %q, but the RR Role is in %q", rrNamespaces, role.Namespace)
	}
}

// The image build copies every package cmd/rrguard is built from, and builds for the platform
// asked for: a package added to the binary but not to the Dockerfile breaks only the image build,
// which no other test runs.
func TestDockerfileCopiesWhatTheBinaryImports(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(env.Root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var copied []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "COPY" && !strings.HasPrefix(f[1], "--") {
			for _, src := range f[1 : len(f)-1] {
				copied = append(copied, strings.TrimSuffix(src, "/")+"/")
			}
		}
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/rrguard")
	cmd.Dir = env.Root
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	const module = "github.com/rrguard/rrguard/"
	n := 0
	for _, pkg := range strings.Fields(string(out)) {
		dir, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		n++
		if !slices.ContainsFunc(copied, func(c string) bool { return strings.HasPrefix(dir+"/", c) }) {
			t.Errorf("cmd/rrguard imports %s, which the Dockerfile does not copy (it copies %v)", pkg, copied)
		}
	}
	if n < 2 {
		t.Fatalf("go list found %d packages of this module under cmd/rrguard: %s", n, out)
	}
	for _, want := range []string{"FROM --platform=$BUILDPLATFORM", "ARG TARGETARCH", "GOOS=$TARGETOS GOARCH=$TARGETARCH"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the Dockerfile has no %q: it would build for one architecture only", want)
		}
	}
}

// make deploy IMG=... sets the image through config/manager/set-image.sh: registry ports, tags
// and digests all render as the image given.
func TestDeployImage(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for img, want := range map[string]string{
		"rrguard:dev":                           "rrguard:dev",
		"registry.local:5000/team/rrguard:v1.2": "registry.local:5000/team/rrguard:v1.2",
		"localhost:5000/rrguard":                "localhost:5000/rrguard:latest",
		"registry.local:5000/rrguard@" + digest: "registry.local:5000/rrguard@" + digest,
		"rrguard:v1@" + digest:                  "rrguard@" + digest,
	} {
		dir := t.TempDir()
		if out, err := exec.Command("cp", "-r", filepath.Join(env.Root, "config"), dir).CombinedOutput(); err != nil {
			t.Fatalf("copying config: %v\n%s", err, out)
		}
		if out, err := exec.Command("sh", filepath.Join(env.Root, "config", "manager", "set-image.sh"), img,
			filepath.Join(dir, "config", "manager", "kustomization.yaml")).CombinedOutput(); err != nil {
			t.Fatalf("set-image.sh %s: %v\n%s", img, err, out)
		}
		rendered, err := exec.Command("kubectl", "kustomize", filepath.Join(dir, "config", "default")).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize after set-image.sh %s: %v", img, err)
		}
		var dep appsv1.Deployment
		decodeAs(t, objects(t, rendered), "Deployment", "controller-manager", &dep)
		if got := dep.Spec.Template.Spec.Containers[0].Image; got != want {
			t.Errorf("IMG=%s renders image %q, want %q", img, got, want)
		}
	}
}

// config/without-kubernaut is config/default with nothing of the RR's: exactly the RR webhook, the
// name-check policy and its binding, and the Role and RoleBinding in Kubernaut's namespace gone,
// no object naming RemediationRequests, and rrguard told to enforce no built-in policy.
func TestWithoutKubernautOverlay(t *testing.T) {
	def := objects(t, render(t, "config/default"))
	without := objects(t, render(t, "config/without-kubernaut"))
	keyOf := func(u *unstructured.Unstructured) string {
		return u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
	}
	kept := map[string]bool{}
	for _, u := range without {
		kept[keyOf(u)] = true
		b, err := u.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(string(b)), "remediationrequest") {
			t.Errorf("config/without-kubernaut renders %s, which names RemediationRequests", keyOf(u))
		}
		if u.GetKind() == "Deployment" {
			args, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
			if s := fmt.Sprint(args); !strings.Contains(s, "--builtin-policies= ") {
				t.Errorf("the Deployment does not disable the built-in policies: %s", s)
			}
		}
	}
	var dropped []string
	for _, u := range def {
		if !kept[keyOf(u)] {
			dropped = append(dropped, keyOf(u))
		}
	}
	slices.Sort(dropped)
	want := []string{
		"MutatingWebhookConfiguration /rrguard-mutating-webhook-configuration",
		"Role kubernaut-system/rrguard-rr-role",
		"RoleBinding kubernaut-system/rrguard-rr-rolebinding",
		"ValidatingAdmissionPolicy rrguard-system/rrguard-name-check",
		"ValidatingAdmissionPolicyBinding rrguard-system/rrguard-name-check",
	}
	if !slices.Equal(dropped, want) || len(without) != len(def)-len(want) {
		t.Errorf("config/without-kubernaut drops %v (renders %d of %d), want exactly the RR's %v", dropped, len(without), len(def), want)
	}
}
