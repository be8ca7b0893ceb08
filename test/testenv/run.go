package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/webhook/serve"
)

// Main starts a control plane for a test package, runs its tests and stops it:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{}, &env)) }
func Main(m *testing.M, o Options, env **Env) int {
	// Errors only: a passing run stays quiet, a failing one says what rrguard saw.
	// RRGUARD_TEST_LOG=debug shows everything.
	level := zapcore.ErrorLevel
	if os.Getenv("RRGUARD_TEST_LOG") == "debug" {
		level = zapcore.Level(-10)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	e, err := Start(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stop:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// TestNamespace gives a test a context bounded by timeout and a namespace of its own.
func (e *Env) TestNamespace(t testing.TB, prefix string, timeout time.Duration) (context.Context, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	ns, err := e.Namespace(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, ns
}

// IndexTrusted sets the timings under which a replica decides from its RR index (see
// serve.Options.IndexMaxLag): a 1 s request bound, a 4 s lag (creation timestamps have whole
// seconds) and a 7 s release hold. The test API server's own request timeout is longer; no test
// holds a create that long.
func IndexTrusted(o *serve.Options) {
	o.RequestTimeout, o.IndexMaxLag, o.ReleaseMinAge = time.Second, 4*time.Second, 7*time.Second
}

// Aside is a ServeReplica adjustment for a replica beside the one the webhook configurations
// name: it serves on a loopback port the kernel picks as it binds (Replica.WebhookAddr), so no
// other process can take the port between a pick and the bind.
func Aside(o *serve.Options) { o.Host, o.Port = "127.0.0.1", 0 }

// Sample reads the UniquenessPolicy of config/samples/<file>.
func (e *Env) Sample(t testing.TB, file string) *rrguardv1.UniquenessPolicy {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.Root, "config", "samples", file))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.ReadPolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// NewObject is a new object of gvk in ns to create with generateName "run-", as CI creators do.
func NewObject(gvk schema.GroupVersionKind, ns string, spec map[string]any, labels map[string]string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetGroupVersionKind(gvk)
	u.SetNamespace(ns)
	u.SetGenerateName("run-")
	u.SetLabels(labels)
	return u
}
