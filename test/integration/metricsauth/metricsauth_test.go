// Package metricsauth checks rrguard's metrics endpoint as a cluster serves it: HTTPS, and only
// to callers the API server authenticates and authorizes for GET /metrics, with the ClusterRole
// config/rbac ships for Prometheus.
package metricsauth

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

// metricsReader is the ClusterRole config/rbac ships for Prometheus, as written there.
func metricsReader(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.Root, "config", "rbac", "metrics_auth_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(strings.NewReader(string(b)), 4096)
	for {
		var cr rbacv1.ClusterRole
		if err := dec.Decode(&cr); err != nil {
			t.Fatalf("config/rbac/metrics_auth_role.yaml has no ClusterRole metrics-reader: %v", err)
		}
		if cr.Kind == "ClusterRole" && cr.Name == "metrics-reader" {
			return &cr
		}
	}
}

func TestMetricsNeedAnAuthorizedToken(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "metricsauth", 2*time.Minute)
	// Port 0: the listener is bound in serve.New, where the kernel picks a port nothing else
	// holds, and rrguard serves nothing until it is.
	r, stop, err := env.ServeReplica(ctx, env.Config, func(o *serve.Options) { o.MetricsAddr, o.MetricsSecure = "127.0.0.1:0", true })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	addr := r.MetricsAddr()
	// One decision, so that rrguard's admission metrics have a series to show.
	if err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns))); err != nil {
		t.Fatal(err)
	}

	cs := kubernetes.NewForConfigOrDie(env.Config)
	token := func(name string) string {
		t.Helper()
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	// Bound before its first scrape: the filter caches a denial for 30 s.
	reader := metricsReader(t)
	reader.Name = ns + "-metrics-reader"
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, reader, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	prometheus := token("prometheus")
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: reader.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: reader.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "prometheus", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), reader.Name, metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoles().Delete(context.Background(), reader.Name, metav1.DeleteOptions{})
	})
	other := token("someone-else")

	// rrguard's self-signed metrics certificate: the caller authenticates by token, not TLS.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	scrape := func(bearer string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"a token the API server does not know", "not-a-token", http.StatusUnauthorized},
		{"a ServiceAccount without the metrics-reader role", other, http.StatusForbidden},
		{"Prometheus's ServiceAccount, bound to metrics-reader", prometheus, http.StatusOK},
	} {
		code, body, err := scrape(tc.token)
		if err != nil || code != tc.want {
			t.Errorf("%s: status %d (%v), want %d: %.200s", tc.name, code, err, tc.want, body)
			continue
		}
		if code == http.StatusOK && !strings.Contains(body, "rrguard_admission_duration_seconds") {
			t.Errorf("%s: 200 without rrguard's metrics: %.300s", tc.name, body)
		}
	}
}
