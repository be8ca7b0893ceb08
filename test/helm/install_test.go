package helm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	release "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/cmenv"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

// helmConfig is what `helm --kubeconfig ... --namespace rrguard-system` sets up.
func helmConfig(t *testing.T, kubeconfig string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(true)
	ns := releaseNS
	flags.KubeConfig, flags.Namespace = &kubeconfig, &ns
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, releaseNS, "secret"); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// install, upgrade and uninstall as an operator would, against the real API server, with
// cert-manager's controllers and cainjector running: every object is validated by its real schema
// (cert-manager's, prometheus-operator's, the admission API's), the certificates are issued and
// injected, the webhook is in force while installed, and uninstall releases every held RR and
// leaves nothing of the chart's behind.
func TestInstallUpgradeUninstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	kubeconfig := env.Kubeconfig(t)
	stopCM, err := cmenv.Start(ctx, env, kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	defer stopCM()

	// RRs rrguard held (its finalizer) before: one of them already deleted and waiting on rrguard.
	rrNS, err := env.Namespace(ctx, "helm-rrs")
	if err != nil {
		t.Fatal(err)
	}
	var held []*v1alpha1.RemediationRequest
	for i := range 3 {
		rr := testenv.NewRR(rrNS, testenv.Fingerprint(fmt.Sprintf("%s/%d", rrNS, i)))
		rr.GenerateName, rr.Name = "", rules.Name(rr.Spec.SignalFingerprint, 1)
		rr.Finalizers = []string{marks.Finalizer}
		if err := env.Client.Create(ctx, rr); err != nil {
			t.Fatal(err)
		}
		held = append(held, rr)
	}
	if err := env.Client.Delete(ctx, held[0]); err != nil {
		t.Fatal(err)
	}

	cfg := helmConfig(t, kubeconfig)
	ch := loadChart(t)
	base := fmt.Sprintf("rrNamespaces: [%s]\nimage: {tag: dev}\n", rrNS)

	in := newInstall(cfg)
	in.CreateNamespace = true
	r, err := in.RunWithContext(ctx, ch, values(t, base))
	if err != nil {
		t.Fatalf("helm install: %v", err)
	}
	installed := split(t, r.(*release.Release))
	dyn := dynamic.NewForConfigOrDie(env.Config)
	for _, u := range installed.objects {
		if _, err := get(ctx, dyn, u); err != nil {
			t.Errorf("after install, %s: %v", key(u), err)
		}
	}
	servingSecret := waitCertificate(ctx, t, 1)

	// The chart's webhook is in force: a create now goes to it (no pod serves it here).
	rr := testenv.NewRR(rrNS, testenv.Fingerprint(rrNS+"/while-installed"))
	if err := env.Client.Create(ctx, rr); err == nil || !strings.Contains(err.Error(), `failed calling webhook "name.rrguard.kubernaut.ai"`) {
		t.Errorf("create while installed: %v, want the API server failing to call rrguard's webhook", err)
	}

	up := action.NewUpgrade(cfg)
	up.Namespace, up.WaitStrategy, up.Timeout = releaseNS, kube.HookOnlyStrategy, 2*time.Minute
	r, err = up.RunWithContext(ctx, releaseName, ch, values(t, base+"nameCheck: webhook\nreplicaCount: 4\nserviceMonitor: {labels: {release: kube-prometheus-stack}}"))
	if err != nil {
		t.Fatalf("helm upgrade: %v", err)
	}
	upgraded := split(t, r.(*release.Release))
	for _, u := range installed.objects {
		if u.GetKind() == "ValidatingAdmissionPolicy" || u.GetKind() == "ValidatingAdmissionPolicyBinding" {
			if _, err := get(ctx, dyn, u); !apierrors.IsNotFound(err) {
				t.Errorf("after the upgrade to nameCheck webhook, %s: %v, want gone", key(u), err)
			}
		}
	}
	var dep appsv1.Deployment
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: releaseNS, Name: "rrguard-controller-manager"}, &dep); err != nil {
		t.Fatal(err)
	}
	if n := *dep.Spec.Replicas; n != 4 {
		t.Errorf("replicas after upgrade: %d, want 4", n)
	}
	if again := waitCertificate(ctx, t, 2); !slices.Equal(again, servingSecret) {
		t.Error("the upgrade reissued the serving certificate")
	}

	// Uninstall, with the post-delete hook's Job run as a kubelet would: its command, as its
	// ServiceAccount.
	if ran := uninstall(ctx, t, cfg); len(ran) != 1 || !strings.Contains(ran[0], "OK: released 3 remediationrequests.kubernaut.ai of policy remediationrequests") {
		t.Fatalf("post-delete Jobs run: %q, want one that released the 3 held RRs", ran)
	}
	store := marks.Store{Namespace: releaseNS, Reader: env.Client}
	for i, rr := range held {
		var cur v1alpha1.RemediationRequest
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), &cur)
		switch {
		case i == 0 && !apierrors.IsNotFound(err):
			t.Errorf("deleted %s still there after uninstall: %v %v", rr.Name, cur.Finalizers, err)
		case i > 0 && (err != nil || slices.Contains(cur.Finalizers, marks.Finalizer)):
			t.Errorf("%s still held after uninstall: %v %v", rr.Name, cur.Finalizers, err)
		}
		if mark, err := store.Get(ctx, rrNS, rr.Spec.SignalFingerprint); err != nil || mark != 1 {
			t.Errorf("mark of %s after uninstall: %d, %v", rr.Name, mark, err)
		}
	}
	for _, u := range append(upgraded.objects, upgraded.hooks...) {
		if _, err := get(ctx, dyn, u); !apierrors.IsNotFound(err) {
			t.Errorf("after uninstall, %s: %v, want gone", key(u), err)
		}
	}
	leftovers(ctx, t, rrNS)
	rr = testenv.NewRR(rrNS, testenv.Fingerprint(rrNS+"/after-uninstall"))
	if err := env.Client.Create(ctx, rr); err != nil {
		t.Errorf("create after uninstall: %v", err)
	}
}

// A kustomize install (`make deploy`) moves to Helm without a gap: `helm install --take-ownership
// --force-conflicts` adopts config/default's objects (the same names and selectors for release rrguard), and from
// then on `helm uninstall` removes them.
func TestHelmAdoptsKustomizeInstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubeconfig := env.Kubeconfig(t)
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubernaut-system"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	rendered, err := testenv.Kustomize(env.Root, "config/default")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := testenv.Kubectl(ctx, kubeconfig, rendered, "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply --server-side config/default: %v\n%s", err, out)
	}

	cfg := helmConfig(t, kubeconfig)
	if _, err := newInstall(cfg).RunWithContext(ctx, loadChart(t), values(t, "image: {tag: dev}")); err == nil || !strings.Contains(err.Error(), "exists and cannot be imported") {
		t.Fatalf("helm install over a kustomize install without --take-ownership: %v, want refused", err)
	}
	in := newInstall(cfg)
	// Without --force-conflicts Helm's server-side apply conflicts with kubectl's field manager on
	// atomic fields (the POD_NAMESPACE fieldRef, the policy's matchConstraints) although the
	// values are the same; forcing hands them to Helm.
	in.TakeOwnership, in.ForceConflicts = true, true
	r, err := in.RunWithContext(ctx, loadChart(t), values(t, "image: {tag: dev}"))
	if err != nil {
		t.Fatalf("helm install --take-ownership: %v", err)
	}
	dyn := dynamic.NewForConfigOrDie(env.Config)
	adopted := split(t, r.(*release.Release))
	for _, u := range adopted.objects {
		got, err := get(ctx, dyn, u)
		if err != nil || got.GetAnnotations()["meta.helm.sh/release-name"] != releaseName {
			t.Errorf("%s not adopted by the release: %v", key(u), err)
		}
	}

	if ran := uninstall(ctx, t, cfg); len(ran) != 1 {
		t.Errorf("post-delete Jobs run: %q, want one", ran)
	}
	for _, u := range adopted.objects {
		if _, err := get(ctx, dyn, u); !apierrors.IsNotFound(err) {
			t.Errorf("after uninstall, %s: %v, want gone", key(u), err)
		}
	}
	leftovers(ctx, t, "kubernaut-system")
}

// newInstall is `helm install rrguard -n rrguard-system` with the CLI's default wait (hooks only).
func newInstall(cfg *action.Configuration) *action.Install {
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace = releaseName, releaseNS
	in.WaitStrategy, in.Timeout = kube.HookOnlyStrategy, 2*time.Minute
	return in
}

// uninstall is `helm uninstall rrguard` with its post-delete Job run; it returns what each Job
// printed.
func uninstall(ctx context.Context, t *testing.T, cfg *action.Configuration) []string {
	t.Helper()
	jobs := runJobs(ctx, t)
	un := action.NewUninstall(cfg)
	un.WaitStrategy, un.Timeout = kube.HookOnlyStrategy, 2*time.Minute
	_, err := un.Run(releaseName)
	ran := jobs.stop()
	if err != nil {
		t.Fatalf("helm uninstall: %v (Jobs printed %q)", err, ran)
	}
	return ran
}

func get(ctx context.Context, dyn dynamic.Interface, u *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := u.GroupVersionKind()
	m, err := env.Client.RESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	return dyn.Resource(m.Resource).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
}

// waitCertificate waits until cert-manager has issued the chart's serving certificate and its
// cainjector has put the CA into every webhook configuration that asks (want of them), each
// verifying the certificate for the Service host the API server calls, as `rrguard check` checks
// it. It returns the certificate.
func waitCertificate(ctx context.Context, t *testing.T, want int) []byte {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		r, err := serve.CheckCertificate(ctx, env.Client, releaseNS, "rrguard-serving-cert")
		switch {
		case err != nil:
			last = err
		case len(r.Webhooks) != want:
			last = fmt.Errorf("%d webhooks ask for the certificate's CA, want %d", len(r.Webhooks), want)
		default:
			last = r.Err(time.Now())
		}
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("serving certificate: %v (%v)", last, err)
	}
	var secret corev1.Secret
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: releaseNS, Name: "rrguard-webhook-server-cert"}, &secret); err != nil {
		t.Fatal(err)
	}
	return secret.Data[corev1.TLSCertKey]
}

// leftovers fails on anything left in the release namespace and the RR namespace, or anywhere in
// the cluster with the release's label, except what is left on purpose: the high-water marks
// (names for life: a reinstall must not reissue a name), cert-manager's two Secrets (cert-manager
// leaves a Certificate's Secret unless run with --enable-certificate-owner-ref), the RRs, Events,
// and objects whose owner is gone (the garbage collector's, which envtest does not run).
func leftovers(ctx context.Context, t *testing.T, rrNS string) {
	t.Helper()
	disc := discovery.NewDiscoveryClientForConfigOrDie(env.Config)
	lists, err := disc.ServerPreferredResources()
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(env.Config)
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range l.APIResources {
			if !slices.Contains(res.Verbs, "list") || res.Kind == "Event" {
				continue
			}
			ri := dyn.Resource(gv.WithResource(res.Name))
			var all []unstructured.Unstructured
			if !res.Namespaced {
				got, err := ri.List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + releaseName})
				if err != nil {
					t.Fatal(err)
				}
				all = got.Items
			}
			for _, ns := range []string{releaseNS, rrNS} {
				if !res.Namespaced {
					break
				}
				got, err := ri.Namespace(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, got.Items...)
			}
			for i := range all {
				if u := &all[i]; !leftOnPurpose(ctx, u) {
					t.Errorf("left behind by uninstall: %s %s/%s (labels %v)", u.GetKind(), u.GetNamespace(), u.GetName(), u.GetLabels())
				}
			}
		}
	}
}

func leftOnPurpose(ctx context.Context, u *unstructured.Unstructured) bool {
	switch {
	case u.GetKind() == "RemediationRequest":
		return true
	case u.GetKind() == "ConfigMap" && u.GetLabels()[marks.Label] == "true":
		return true
	case u.GetKind() == "Secret" && slices.Contains([]string{"rrguard-webhook-server-cert", "rrguard-webhook-ca"}, u.GetName()):
		return true
	}
	owners := u.GetOwnerReferences()
	for _, o := range owners {
		owner := &unstructured.Unstructured{}
		owner.SetAPIVersion(o.APIVersion)
		owner.SetKind(o.Kind)
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: u.GetNamespace(), Name: o.Name}, owner)
		if !apierrors.IsNotFound(err) {
			return false
		}
	}
	return len(owners) > 0
}

// jobRunner stands in for the kubelet and the Job controller, which envtest does not run: each
// new Job in the release namespace has its container's arguments run by the rrguard binary (the
// image's entrypoint) as the Job's ServiceAccount, and its status set to what a Job reaching that
// end would have.
type jobRunner struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ran    []string
}

func runJobs(ctx context.Context, t *testing.T) *jobRunner {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rrguard")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/rrguard")
	build.Dir = env.Root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building rrguard: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(ctx)
	j := &jobRunner{cancel: cancel}
	seen := map[types.UID]bool{}
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		_ = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			var jobs batchv1.JobList
			if err := env.Client.List(ctx, &jobs, client.InNamespace(releaseNS)); err != nil {
				return false, nil
			}
			for i := range jobs.Items {
				job := &jobs.Items[i]
				if seen[job.UID] {
					continue
				}
				seen[job.UID] = true
				out, err := j.run(ctx, t, bin, job)
				j.mu.Lock()
				j.ran = append(j.ran, out)
				j.mu.Unlock()
				if err != nil {
					t.Errorf("Job %s: %v\n%s", job.Name, err, out)
				}
			}
			return false, nil
		})
	}()
	return j
}

func (j *jobRunner) run(ctx context.Context, t *testing.T, bin string, job *batchv1.Job) (string, error) {
	pod := job.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.Containers[0].Command) != 0 {
		return "", fmt.Errorf("want one container run by the image's entrypoint, got %+v", pod.Containers)
	}
	as := env.KubeconfigAs(t, "system:serviceaccount:"+job.Namespace+":"+pod.ServiceAccountName,
		"system:serviceaccounts", "system:serviceaccounts:"+job.Namespace, "system:authenticated")
	cmd := exec.CommandContext(ctx, bin, pod.Containers[0].Args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+as)
	out, runErr := cmd.CombinedOutput()

	now := metav1.Now()
	job.Status.StartTime = &now
	cond := func(typ batchv1.JobConditionType) batchv1.JobCondition {
		return batchv1.JobCondition{Type: typ, Status: corev1.ConditionTrue, LastProbeTime: now, LastTransitionTime: now}
	}
	if runErr == nil {
		job.Status.CompletionTime, job.Status.Succeeded = &now, 1
		job.Status.Conditions = []batchv1.JobCondition{cond(batchv1.JobSuccessCriteriaMet), cond(batchv1.JobComplete)}
	} else {
		job.Status.Failed = 1
		job.Status.Conditions = []batchv1.JobCondition{cond(batchv1.JobFailureTarget), cond(batchv1.JobFailed)}
	}
	if err := env.Client.Status().Update(ctx, job); err != nil {
		return string(out), errors.Join(runErr, fmt.Errorf("setting the Job's status: %w", err))
	}
	return string(out), runErr
}

func (j *jobRunner) stop() []string {
	j.cancel()
	j.wg.Wait()
	return j.ran
}
