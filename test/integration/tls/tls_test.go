// Package tls proves rrguard's TLS with cert-manager's own code: cert-manager's controllers issue
// the serving certificate from config/certmanager, its cainjector puts the CA into the webhook
// configurations, and the API server reaches rrguard over TLS verified with that CA, through a
// forced rotation.
package tls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/test/cmenv"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

const ns = "rrguard-tls"

var (
	env        *testenv.Env
	kubeconfig string
)

func TestMain(m *testing.M) {
	crds, err := cmenv.CRDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, testenv.Options{
		// With rrguard's validating webhook: cert-manager injects its CA into both configurations.
		Webhooks: true, CheckWebhook: true, ExtraCRDs: []string{crds}, AddToScheme: []func(*runtime.Scheme) error{cmapi.AddToScheme},
	}, &env))
}

// kubectl runs the real kubectl against the control plane.
func kubectl(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	out, err := testenv.Kubectl(context.Background(), kubeconfig, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	return []byte(out)
}

func eventually(t *testing.T, what string, limit time.Duration, f func() error) {
	t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, limit, true, func(context.Context) (bool, error) {
		last = f()
		return last == nil, nil
	}); err != nil {
		t.Fatalf("%s: not within %s: %v", what, limit, last)
	}
}

// mountSecret copies a Secret into dir the way the kubelet projects a Secret volume: the files
// are symlinks into a timestamped folder, switched atomically through "..data". It follows the
// Secret until ctx ends.
func mountSecret(ctx context.Context, t *testing.T, name, dir string) {
	t.Helper()
	var lastRV string
	sync := func() error {
		var s corev1.Secret
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
			return err
		}
		if s.ResourceVersion == lastRV || len(s.Data["tls.crt"]) == 0 {
			return nil
		}
		ts := filepath.Join(dir, "..rv-"+s.ResourceVersion)
		if err := os.MkdirAll(ts, 0o700); err != nil {
			return err
		}
		for k, v := range s.Data {
			if err := os.WriteFile(filepath.Join(ts, k), v, 0o600); err != nil {
				return err
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		_ = os.Remove(tmp)
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			return err
		}
		for k := range s.Data {
			link := filepath.Join(dir, k)
			if _, err := os.Lstat(link); err != nil {
				if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
					return err
				}
			}
		}
		lastRV = s.ResourceVersion
		return nil
	}
	eventually(t, "Secret "+name+" issued and mounted", 60*time.Second, func() error {
		if err := sync(); err != nil {
			return err
		}
		if lastRV == "" {
			return fmt.Errorf("Secret has no tls.crt yet")
		}
		return nil
	})
	// Follow the Secret as the kubelet does, on a period.
	go wait.UntilWithContext(ctx, func(context.Context) { _ = sync() }, 200*time.Millisecond)
}

// servedCert returns the leaf certificate rrguard presents.
func servedCert(addr string) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // inspecting, not trusting
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

type stack struct {
	addr  string
	caPEM []byte
}

var (
	once     sync.Once
	shared   stack
	setupErr error
)

// setup brings up, once per package: cert-manager, config/certmanager applied with kubectl, the
// CA injected into rrguard's webhook configurations, and rrguard serving the issued Secret.
func setup(t *testing.T) stack {
	t.Helper()
	once.Do(func() {
		setupErr = fmt.Errorf("set-up failed in an earlier test")
		setupErr = bringUp(t)
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	return shared
}

func bringUp(t *testing.T) error {
	ctx, cancel := context.WithCancel(context.Background())
	kubeconfig = filepath.Join(os.TempDir(), fmt.Sprintf("rrguard-tls-%d.kubeconfig", os.Getpid()))
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		cancel()
		return err
	}
	stopCM, err := cmenv.Start(ctx, env, kubeconfig)
	if err != nil {
		cancel()
		return err
	}
	env.OnStop(func() error {
		cancel()
		stopCM()
		_ = os.Remove(kubeconfig)
		return nil
	})
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		cancel()
		return err
	}
	// Point the webhook configurations that envtest installed (local URL, envtest's own CA) at
	// cert-manager's CA, as config/default's annotation does in a cluster, before the Secret exists.
	for _, obj := range []client.Object{&admissionregistrationv1.MutatingWebhookConfiguration{}, &admissionregistrationv1.ValidatingWebhookConfiguration{}} {
		name := "rrguard-mutating-webhook-configuration"
		if _, ok := obj.(*admissionregistrationv1.ValidatingWebhookConfiguration); ok {
			name = "rrguard-validating-webhook-configuration"
		}
		patch := []byte(`{"metadata":{"annotations":{"cert-manager.io/inject-ca-from":"` + ns + `/serving-cert"}}}`)
		obj.SetName(name)
		if err := env.Client.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
			cancel()
			return err
		}
	}
	rendered := kubectl(t, nil, "kustomize", filepath.Join(env.Root, "test/integration/tls/overlay"))
	kubectl(t, rendered, "apply", "--server-side", "-f", "-")

	certDir, err := os.MkdirTemp("", "rrguard-tls-certs-")
	if err != nil {
		cancel()
		return err
	}
	mountSecret(ctx, t, "rrguard-webhook-server-cert", certDir)
	var secret corev1.Secret
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rrguard-webhook-server-cert"}, &secret); err != nil {
		cancel()
		return err
	}
	caPEM := secret.Data["ca.crt"]
	eventually(t, "cainjector injects cert-manager's CA into both webhook configurations", 60*time.Second, func() error {
		var m admissionregistrationv1.MutatingWebhookConfiguration
		var v admissionregistrationv1.ValidatingWebhookConfiguration
		if err := env.Client.Get(ctx, types.NamespacedName{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
			return err
		}
		if err := env.Client.Get(ctx, types.NamespacedName{Name: "rrguard-validating-webhook-configuration"}, &v); err != nil {
			return err
		}
		// cainjector merges a new CA into the bundle (feature CAInjectorMerging) rather than
		// replacing it, so that a CA rotation never leaves a window without trust.
		if !bytes.Contains(m.Webhooks[0].ClientConfig.CABundle, caPEM) || !bytes.Contains(v.Webhooks[0].ClientConfig.CABundle, caPEM) {
			return fmt.Errorf("caBundle does not hold the CA of the serving certificate yet")
		}
		return nil
	})

	if _, err := env.ServeRRGuard(ctx, func(o *serve.Options) { o.CertDir = certDir }); err != nil {
		cancel()
		return err
	}
	o := env.ServeOptions()
	env.OnStop(func() error { return os.RemoveAll(certDir) })
	shared = stack{addr: net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), caPEM: caPEM}
	return nil
}

// The API server reaches rrguard over TLS that it verifies with the CA cainjector injected: the
// certificate rrguard serves must chain to it, and GW-DEDUP-002 must pass on that path.
func TestCertManagerTLSPath(t *testing.T) {
	s := setup(t)
	ctx, n := env.TestNamespace(t, "tls", 2*time.Minute)

	leaf, err := servedCert(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("served certificate does not chain to cert-manager's CA: %v", err)
	}
	if leaf.IsCA || leaf.Issuer.CommonName != "rrguard-webhook-ca" {
		t.Fatalf("served certificate is not a leaf issued by the CA Issuer: issuer %q, isCA %v", leaf.Issuer.CommonName, leaf.IsCA)
	}

	fp := testenv.Fingerprint(n + "/tls")
	// The API server learns the injected caBundle through its own informer, a moment after.
	var out []testenv.Outcome
	eventually(t, "a create through the cert-manager TLS path", 30*time.Second, func() error {
		out = testenv.Storm(ctx, env.Client, n, []string{fp}, 5)
		for _, o := range out {
			if o.Err != nil {
				return o.Err
			}
		}
		return nil
	})
	stored, dups := 0, 0
	for _, o := range out {
		if o.Stored != "" {
			stored++
		} else if o.DuplicateOf != "" {
			dups++
		}
	}
	if stored != 1 || dups != 4 {
		t.Fatalf("GW-DEDUP-002 over cert-manager TLS: %d stored, %d refused; want 1 and 4", stored, dups)
	}
}

// A forced re-issue (what `cmctl renew` does: the Issuing condition) rotates the serving key pair
// under a running stream of creates: rrguard must serve the new pair without a restart, and not one
// admission request may fail.
func TestRotationUnderLoad(t *testing.T) {
	s := setup(t)
	ctx, n := env.TestNamespace(t, "tls", 3*time.Minute)

	before, err := servedCert(s.addr)
	if err != nil {
		t.Fatal(err)
	}

	var sent, failed atomic.Int64
	var firstErr atomic.Value
	streamCtx, stopStream := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; streamCtx.Err() == nil; i++ {
				err := env.Client.Create(ctx, testenv.NewRR(n, testenv.Fingerprint(fmt.Sprintf("%s/%d/%d", n, w, i))))
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}

	// Rotate once the stream is flowing.
	eventually(t, "creates flowing", 30*time.Second, func() error {
		if sent.Load() < 10 {
			return fmt.Errorf("%d creates sent", sent.Load())
		}
		return nil
	})
	var cert cmapi.Certificate
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "serving-cert"}, &cert); err != nil {
		t.Fatal(err)
	}
	cert.Status.Conditions = append(cert.Status.Conditions, cmapi.CertificateCondition{
		Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue,
		Reason: "ManuallyTriggered", Message: "rotation test", LastTransitionTime: &metav1.Time{Time: time.Now()},
	})
	if err := env.Client.Status().Update(ctx, &cert); err != nil {
		t.Fatalf("trigger re-issue: %v", err)
	}

	var after *x509.Certificate
	eventually(t, "rrguard serves the re-issued key pair", 60*time.Second, func() error {
		c, err := servedCert(s.addr)
		if err != nil {
			return err
		}
		if c.SerialNumber.Cmp(before.SerialNumber) == 0 {
			return fmt.Errorf("still serving serial %s", before.SerialNumber)
		}
		after = c
		return nil
	})
	// Creates keep flowing on the new pair.
	onNew := sent.Load()
	eventually(t, "creates on the new pair", 30*time.Second, func() error {
		if sent.Load() < onNew+10 {
			return fmt.Errorf("%d creates since the new pair", sent.Load()-onNew)
		}
		return nil
	})
	stopStream()
	wg.Wait()

	if bytes.Equal(after.RawSubjectPublicKeyInfo, before.RawSubjectPublicKeyInfo) {
		t.Error("the re-issued certificate kept the old key (rotationPolicy Always)")
	}
	t.Logf("%d creates during rotation, serial %s -> %s", sent.Load(), before.SerialNumber, after.SerialNumber)
	if failed.Load() != 0 {
		t.Fatalf("%d of %d creates failed during rotation; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	if sent.Load() < 20 {
		t.Fatalf("only %d creates ran during rotation: the stream did not cover it", sent.Load())
	}
}

// bindAttempts bounds the picks of a free port for one listener: each fails only if another
// process took the port in the instant between pick and bind.
const bindAttempts = 5

// Until a serving certificate is loaded, /readyz fails, so no Service routes the API server to the
// replica; it turns ready once the files appear, without a restart.
func TestNotReadyWithoutServingCert(t *testing.T) {
	s := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	// The probe's address must be known before New binds it (controller-runtime does not say where
	// a port of 0 went): a port another process takes between the pick and the bind is New's
	// EADDRINUSE, and another pick is tried.
	var probe string
	var r *serve.Replica
	var err error
	for attempt := 1; ; attempt++ {
		probe = testenv.FreeAddr(t)
		r, err = serve.New(env.Config, serve.Options{Host: "127.0.0.1", Port: 0, CertDir: dir, MetricsAddr: "0", ProbeAddr: probe, MarksNamespace: testenv.MarksNamespace})
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || attempt == bindAttempts {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { done <- r.Run(rctx) }()
	defer func() { stop(); <-done }()

	readyz := func() (int, string, error) {
		resp, err := http.Get("http://" + probe + "/readyz?verbose")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String(), nil
	}
	eventually(t, "probe server up", 30*time.Second, func() error { _, _, err := readyz(); return err })
	// Sampled five times over a second: it stays unready.
	samples := 0
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		code, body, err := readyz()
		if err != nil || code == http.StatusOK {
			t.Fatalf("readyz without a certificate: %d %v\n%s", code, err, body)
		}
		samples++
		return samples == 5, nil
	})
	var secret corev1.Secret
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rrguard-webhook-server-cert"}, &secret); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), secret.Data[f], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "readyz once the certificate is there", 30*time.Second, func() error {
		code, body, err := readyz()
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d: %s", code, body)
		}
		return nil
	})
	_ = s
}

// rrguard check's certificate report, on cert-manager's real objects: Ready, its expiry and issuer,
// and both webhook configurations trusting what rrguard serves; then on copies of those
// configurations with the faults it must catch (another CA in the bundle, a host the certificate
// does not name).
func TestCheckReportsCertificate(t *testing.T) {
	setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := serve.CheckCertificate(ctx, env.Client, ns, "serving-cert")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(time.Now()); err != nil || !r.Ready || r.Issuer != "Issuer/ca-issuer" || time.Until(r.NotAfter) < 24*time.Hour || len(r.Webhooks) != 2 {
		t.Fatalf("report %+v: %v", r, err)
	}
	if err := r.Err(r.NotAfter.Add(time.Second)); !errors.Is(err, serve.ErrCertificate) {
		t.Fatalf("past its expiry: %v", err)
	}

	var cert cmapi.Certificate
	var secret corev1.Secret
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "serving-cert"}, &cert); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: cert.Spec.SecretName}, &secret); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, types.NamespacedName{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
		t.Fatal(err)
	}
	otherCA := m.DeepCopy()
	otherCA.Webhooks[0].ClientConfig.CABundle = env.Environment().WebhookInstallOptions.LocalServingCAData
	otherHost := m.DeepCopy()
	u := "https://rrguard.example:9443/name"
	otherHost.Webhooks[0].ClientConfig.URL = &u
	for _, tc := range []struct {
		name string
		m    admissionregistrationv1.MutatingWebhookConfiguration
	}{{"another CA in the bundle", *otherCA}, {"a host the certificate does not name", *otherHost}} {
		r := serve.AssessCertificate(&cert, &secret, []admissionregistrationv1.MutatingWebhookConfiguration{tc.m}, nil)
		if err := r.Err(time.Now()); !errors.Is(err, serve.ErrCertificate) || len(r.Webhooks) != 1 || r.Webhooks[0].Trusted {
			t.Errorf("%s: %+v, %v", tc.name, r, err)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}
