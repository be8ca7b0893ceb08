// Package tekton tests the Tekton samples against Tekton Pipelines' own controller (tektoncd/pipeline
// v1.15.0, cmd/controller built from source in the module test/tekton by `make tekton-controller`,
// which `make test` runs), on a real API server with Tekton's CRDs of the same release: a held
// PipelineRun makes no TaskRun, a released one does, and a run Tekton reports cancelled releases
// the next. No kubelet runs, so a TaskRun's Pod never starts: runs end by being cancelled, which
// Tekton reports finished without waiting for their Pods (pkg/reconciler/pipelinerun/cancel.go).
package tekton

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/localcp"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

// tektonModule is the module the controller is built from; its version is test/tekton/go.mod's.
const tektonModule = "github.com/tektoncd/pipeline"

// systemNamespace is Tekton's own namespace (SYSTEM_NAMESPACE): its configuration lives there.
const systemNamespace = "tekton-pipelines"

// tektonMinimum is the oldest Kubernetes the pinned release runs on (its KUBERNETES_MIN_VERSION
// default, knative.dev/pkg/version): on older API servers the controller refuses to start.
var tektonMinimum = version.MustParseGeneric("1.34.0")

func TestMain(m *testing.M) {
	crds, err := tektonDir("config", "300-crds")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tekton:", err)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, testenv.Options{Webhooks: true, NoKubernaut: true, ExtraCRDs: []string{crds}}, &env))
}

// tektonDir is a folder of the pinned Tekton release, from the Go module cache (where building the
// controller put it; `go mod download` in test/tekton otherwise).
func tektonDir(elem ...string) (string, error) {
	root, err := testenv.Root()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", tektonModule)
	cmd.Dir = filepath.Join(root, "test", "tekton")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("finding %s of test/tekton/go.mod: %w", tektonModule, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("%s is not in the module cache: run `cd test/tekton && go mod download %s`", tektonModule, tektonModule)
	}
	return filepath.Join(append([]string{dir}, elem...)...), nil
}

var (
	pipelineRunGVK = schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"}
	taskRunGVK     = schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "TaskRun"}
)

// runTekton starts Tekton's controller against the test's API server until the test ends: its
// configuration (the ConfigMaps it requires, with their defaults), no leader election, image names
// it never pulls (nothing runs a Pod here).
func runTekton(ctx context.Context, t *testing.T) {
	t.Helper()
	bin := os.Getenv("RRGUARD_TEKTON_CONTROLLER")
	if bin == "" {
		bin = filepath.Join(env.Root, "bin", "tekton-controller")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Tekton's controller is not built (%v): run `make tekton-controller`", err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}}
	if err := client.IgnoreAlreadyExists(env.Client.Create(ctx, ns)); err != nil {
		t.Fatal(err)
	}
	// The ConfigMaps whose absence stops it (each read through knative's informed watcher); empty
	// data is every key's default.
	for _, name := range []string{"config-defaults", "feature-flags", "config-observability", "config-spire",
		"config-events", "config-tracing", "config-wait-exponential-backoff", "config-logging", "config-leader-election-controller"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: systemNamespace, Name: name}}
		if err := client.IgnoreAlreadyExists(env.Client.Create(ctx, cm)); err != nil {
			t.Fatal(err)
		}
	}
	probes, profiling := freePort(t), freePort(t)
	logPath := filepath.Join(t.TempDir(), "tekton-controller.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-kubeconfig="+env.Kubeconfig(t), "-disable-ha",
		"-entrypoint-image=example.invalid/entrypoint", "-nop-image=example.invalid/nop",
		"-sidecarlogresults-image=example.invalid/sidecarlogresults", "-workingdirinit-image=example.invalid/workingdirinit",
		"-shell-image=example.invalid/shell", "-shell-image-win=example.invalid/shell-win")
	cmd.Env = append(os.Environ(), "SYSTEM_NAMESPACE="+systemNamespace,
		fmt.Sprintf("PROBES_PORT=%d", probes), fmt.Sprintf("PROFILING_PORT=%d", profiling),
		"CONFIG_LEADERELECTION_NAME=config-leader-election-controller")
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group (a Ctrl-C meant for the tests must not stop it before the test
	// does), and killed if the test binary dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		localcp.Terminate(cmd.Process, exited)
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 6000 {
				out = out[len(out)-6000:]
			}
			t.Logf("Tekton controller's log (end):\n%s", out)
		}
	})
	select {
	case err := <-exited:
		out, _ := os.ReadFile(logPath)
		t.Fatalf("Tekton's controller exited at once: %v\n%s", err, out)
	case <-time.After(2 * time.Second):
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pipelineRun is a push to shop/main: one task of one step (with a command, so Tekton looks up no
// image in a registry).
func pipelineRun(ns string) *unstructured.Unstructured {
	return testenv.NewObject(pipelineRunGVK, ns, map[string]any{
		"pipelineSpec": map[string]any{"tasks": []any{map[string]any{
			"name": "build",
			"taskSpec": map[string]any{"steps": []any{map[string]any{
				"name": "build", "image": "registry.k8s.io/pause:3.10", "command": []any{"/pause"},
			}}},
		}}},
	}, map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"})
}

func get(ctx context.Context, t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(pipelineRunGVK)
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}

func create(ctx context.Context, t *testing.T, ns string) string {
	t.Helper()
	u := pipelineRun(ns)
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	return u.GetName()
}

// taskRuns is how many TaskRuns Tekton made for the PipelineRun name.
func taskRuns(ctx context.Context, t *testing.T, ns, name string) int {
	t.Helper()
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(taskRunGVK.GroupVersion().WithKind("TaskRunList"))
	if err := env.Client.List(ctx, l, client.InNamespace(ns), client.MatchingLabels{"tekton.dev/pipelineRun": name}); err != nil {
		t.Fatal(err)
	}
	return len(l.Items)
}

// succeeded is the PipelineRun's Succeeded condition as Tekton wrote it: status and reason.
func succeeded(u *unstructured.Unstructured) (status, reason string) {
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range cs {
		m, _ := c.(map[string]any)
		if m["type"] == "Succeeded" {
			s, _ := m["status"].(string)
			r, _ := m["reason"].(string)
			return s, r
		}
	}
	return "", ""
}

// awaitTaskRun waits until Tekton has made a TaskRun for name: rrguard released it and Tekton
// started it.
func awaitTaskRun(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		return taskRuns(ctx, t, ns, name) > 0, nil
	}); err != nil {
		u := get(ctx, t, ns, name)
		t.Fatalf("no TaskRun for %s: %v (annotations %v, spec.status %v, status %v)", name, err, u.GetAnnotations(), u.Object["spec"].(map[string]any)["status"], u.Object["status"])
	}
}

// awaitPending waits until Tekton has seen name pending (its condition says so), then checks it
// made no TaskRun for it.
func awaitPending(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, reason := succeeded(get(ctx, t, ns, name))
		return reason == "PipelineRunPending", nil
	}); err != nil {
		t.Fatalf("Tekton did not report %s pending: %v (status %v)", name, err, get(ctx, t, ns, name).Object["status"])
	}
	u := get(ctx, t, ns, name)
	if n := taskRuns(ctx, t, ns, name); n != 0 || released(u) || u.Object["spec"].(map[string]any)["status"] != "PipelineRunPending" {
		t.Fatalf("%s: %d TaskRuns, released %v, spec.status %v; want it held pending", name, n, released(u), u.Object["spec"].(map[string]any)["status"])
	}
}

// history is what one watch of ns's PipelineRuns showed, in the API server's commit order: each
// run's first sight released by rrguard and finished by Tekton.
type history struct {
	mu     sync.Mutex
	events []string // "released <name>", "finished <name>"
}

func watchHistory(ctx context.Context, t *testing.T, ns string) *history {
	t.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(pipelineRunGVK.GroupVersion().WithKind("PipelineRunList"))
	w, err := wc.Watch(ctx, l, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	h := &history{}
	go func() {
		for ev := range w.ResultChan() {
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if released(u) {
				h.add("released " + u.GetName())
			}
			if s, _ := succeeded(u); s == "True" || s == "False" {
				h.add("finished " + u.GetName())
			}
		}
	}()
	return h
}

func (h *history) add(e string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !slices.Contains(h.events, e) {
		h.events = append(h.events, e)
	}
}

// at waits until the watch has shown e and gives its place.
func (h *history) at(ctx context.Context, t *testing.T, e string) int {
	t.Helper()
	i := -1
	_ = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		i = slices.Index(h.events, e)
		return i >= 0, nil
	})
	if i < 0 {
		t.Fatalf("the watch never showed %q (it showed %v)", e, h.events)
	}
	return i
}

// awaitCancelled waits until Tekton reports name finished, cancelled.
func awaitCancelled(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		s, reason := succeeded(get(ctx, t, ns, name))
		return s == "False" && strings.HasPrefix(reason, "Cancelled"), nil
	}); err != nil {
		t.Fatalf("Tekton did not finish %s cancelled: %v (status %v)", name, err, get(ctx, t, ns, name).Object["status"])
	}
}

// cancel is a user's cancel of a running PipelineRun (tkn pipelinerun cancel).
func cancel(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	if err := env.Client.Patch(ctx, get(ctx, t, ns, name), client.RawPatch(types.MergePatchType, []byte(`{"spec":{"status":"Cancelled"}}`))); err != nil {
		t.Fatal(err)
	}
}

func released(u *unstructured.Unstructured) bool { return testenv.Released(u) }

// The Queue and Replace samples with Tekton's controller: under Queue, three runs of one branch,
// the first released (Tekton makes its TaskRun), the others held pending (Tekton reports them
// pending and makes no TaskRun) until the one before ends; under Replace, the running one and the
// held middle one cancelled with the sample's patch (Tekton reports both cancelled, and the middle
// one never gets a TaskRun), the newest released once Tekton has finished the cancelled one.
func TestSamplesWithTektonsController(t *testing.T) {
	if env.Release.LessThan(tektonMinimum) {
		t.Skipf("Tekton v1.15 runs on Kubernetes %s or later; this API server is %s", tektonMinimum, env.Release)
	}
	ctx, ns := env.TestNamespace(t, "tekton", 5*time.Minute)
	stop, err := env.ServeRRGuard(ctx, testenv.IndexTrusted)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	// Tekton's Pods name the namespace's default ServiceAccount; no controller manager makes it here.
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	runTekton(ctx, t)
	enforce := func(t *testing.T, file string) {
		p := env.Sample(t, file)
		p.Spec.Target.Namespaces = []string{ns}
		env.EnforceHeld(ctx, t, p, func() client.Object { return pipelineRun(ns) })
	}

	t.Run("Queue", func(t *testing.T) {
		enforce(t, "tekton-pipelinerun-queue.yaml")
		runs := []string{create(ctx, t, ns), create(ctx, t, ns), create(ctx, t, ns)}
		for i, name := range runs {
			awaitTaskRun(ctx, t, ns, name)
			if !released(get(ctx, t, ns, name)) {
				t.Fatalf("%s has a TaskRun but rrguard holds it still", name)
			}
			for _, next := range runs[i+1:] {
				awaitPending(ctx, t, ns, next)
			}
			cancel(ctx, t, ns, name)
			awaitCancelled(ctx, t, ns, name)
		}
	})

	t.Run("Replace", func(t *testing.T) {
		enforce(t, "tekton-pipelinerun-replace.yaml")
		h := watchHistory(ctx, t, ns)
		first := create(ctx, t, ns)
		awaitTaskRun(ctx, t, ns, first)
		second, third := create(ctx, t, ns), create(ctx, t, ns)
		awaitCancelled(ctx, t, ns, first)
		awaitCancelled(ctx, t, ns, second)
		awaitTaskRun(ctx, t, ns, third)
		if n := taskRuns(ctx, t, ns, second); n != 0 || released(get(ctx, t, ns, second)) {
			t.Fatalf("the middle run %s was released (%d TaskRuns)", second, n)
		}
		// waitForEnd: the newest was released only after Tekton had finished the cancelled one.
		if ended, started := h.at(ctx, t, "finished "+first), h.at(ctx, t, "released "+third); started < ended {
			t.Fatalf("%s released before Tekton finished the cancelled %s (watch: %v)", third, first, h.events)
		}
	})
}
