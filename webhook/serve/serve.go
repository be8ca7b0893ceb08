// Package serve wires rrguard's admission handlers into a controller-runtime manager, the same
// way for the rrguard binary, `make run` and the integration tests.
package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/marks"
	"github.com/rrguard/rrguard/webhook"
)

// Options configure one rrguard replica.
type Options struct {
	Host        string // webhook listen host; all interfaces when empty
	Port        int    // webhook listen port
	CertDir     string // holds tls.crt and tls.key; reloaded when they change
	MetricsAddr string // "0" disables the metrics server
	ProbeAddr   string // "0" disables /healthz and /readyz
	// ConsistentListOnly decides every create from a consistent List of the fingerprint's RRs,
	// with no cache: cost grows with the RRs in the namespace. Off, an informer cache finds the
	// candidates and one consistent GET confirms them.
	ConsistentListOnly bool
	// CacheView, when set, wraps the cache reader the decision takes its candidates from. Tests
	// hold it back on purpose, to show that a lagging cache stores no duplicate.
	CacheView func(client.Reader) client.Reader
	// MarksNamespace holds the high-water mark ConfigMaps (package marks): rrguard's own
	// namespace.
	MarksNamespace string
	// ReleaseMinAge holds a deleted RR at least this long after its creation before releasing
	// it; marks.DefaultMinAge when zero.
	ReleaseMinAge time.Duration
	// SeedEvery repeats the seeding of marks from RRs without rrguard's finalizer; 30 s when zero.
	SeedEvery time.Duration
	// MarkHorizon removes marks older than it whose fingerprint has no RR left
	// (marks.DefaultHorizon when zero), looked for every MarkGCEvery (1 h when zero).
	MarkHorizon, MarkGCEvery time.Duration
	// AfterRead, when set, runs between each naming decision's reads and its answer (tests).
	AfterRead func(ctx context.Context, rr *v1alpha1.RemediationRequest)
	// ShutdownDelay keeps serving after a stop is asked for, while /readyz already fails, so that
	// endpoints drop the pod before it stops answering the API server.
	ShutdownDelay time.Duration
}

// Scheme knows the built-in types and RemediationRequest.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registration; cannot fail at run time
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Replica is one rrguard webhook server.
type Replica struct {
	mgr      manager.Manager
	seeder   *marks.Seeder
	stopping atomic.Bool
	delay    time.Duration
}

// New builds a replica against the API server of cfg.
func New(cfg *rest.Config, o Options) (*Replica, error) {
	cert := newServingCert(o.CertDir)
	tlsOpts := []func(*tls.Config){func(c *tls.Config) {
		c.GetCertificate = cert.GetCertificate
		c.MinVersion = tls.VersionTLS12
		// HTTP/2 stays off: rapid-reset class attacks; the API server speaks HTTP/1.1 to webhooks.
		c.NextProtos = []string{"http/1.1"}
	}}
	server := crwebhook.NewServer(crwebhook.Options{
		Host: o.Host, Port: o.Port, CertDir: o.CertDir, TLSOpts: tlsOpts,
	})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: Scheme(),
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&v1alpha1.RemediationRequest{}: {Transform: webhook.SlimForCache},
		}},
		WebhookServer:          server,
		Metrics:                metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress: o.ProbeAddr,
		// Every replica serves; there is nothing to lead.
		LeaderElection:          false,
		GracefulShutdownTimeout: ptr(30 * time.Second),
	})
	if err != nil {
		return nil, err
	}
	r := &Replica{mgr: mgr, delay: o.ShutdownDelay}
	// The manager runs its webhook server only once it has been asked for it.
	server = mgr.GetWebhookServer()

	var lister webhook.Lister = webhook.APILister{Reader: mgr.GetAPIReader()}
	if !o.ConsistentListOnly {
		ctx := context.Background()
		if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.RemediationRequest{}, webhook.FingerprintField, webhook.IndexFingerprint); err != nil {
			return nil, err
		}
		// Registered now, started with the manager; until it has synced, decisions use
		// consistent Lists.
		inf, err := mgr.GetCache().GetInformer(ctx, &v1alpha1.RemediationRequest{}, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, err
		}
		var view client.Reader = mgr.GetClient()
		if o.CacheView != nil {
			view = o.CacheView(view)
		}
		lister = webhook.CachedLister{Cache: view, API: mgr.GetAPIReader(), Synced: inf.HasSynced}
	}
	if o.MarksNamespace == "" {
		return nil, errors.New("serve: MarksNamespace is required (rrguard's own namespace)")
	}
	// Each create reads one mark shard: protobuf, which ConfigMaps speak, costs the API server
	// less than JSON. Uncached: a mark read from a lagging cache could be too low.
	protoCfg := rest.CopyConfig(cfg)
	protoCfg.ContentType = "application/vnd.kubernetes.protobuf"
	marksReader, err := client.New(protoCfg, client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return nil, err
	}
	store := marks.Store{Namespace: o.MarksNamespace, Reader: marksReader, Writer: mgr.GetClient()}
	seeder := &marks.Seeder{Client: mgr.GetClient(), Store: store, Every: o.SeedEvery, Horizon: o.MarkHorizon, GCEvery: o.MarkGCEvery}
	if err := mgr.Add(seeder); err != nil {
		return nil, err
	}
	if err := (&marks.Releaser{Client: mgr.GetClient(), Store: store, MinAge: o.ReleaseMinAge}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	r.seeder = seeder
	server.Register(webhook.NamePath, &crwebhook.Admission{Handler: &webhook.Namer{
		Lister: lister, Marks: store, Finalizer: marks.Finalizer, Ready: seeder.Ready, AfterRead: o.AfterRead,
	}})
	server.Register(webhook.CheckPath, &crwebhook.Admission{Handler: webhook.Checker{}})

	if err := mgr.Add(cert); err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("serving-cert", cert.Loaded); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("marks-seeded", func(*http.Request) error { return seeder.Ready() }); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("webhook-tls", server.StartedChecker()); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("not-stopping", func(*http.Request) error {
		if r.stopping.Load() {
			return errors.New("shutting down")
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return r, nil
}

// Seeded reports whether the replica has seeded its marks and decides.
func (r *Replica) Seeded() error { return r.seeder.Ready() }

// Manager exposes the controller-runtime manager, for tests that look inside.
func (r *Replica) Manager() manager.Manager { return r.mgr }

// Run serves until ctx is done, then fails readiness, waits ShutdownDelay, and stops.
func (r *Replica) Run(ctx context.Context) error {
	mgrCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.mgr.Start(mgrCtx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	r.stopping.Store(true)
	select {
	case err := <-done:
		return err
	case <-time.After(r.delay):
	}
	cancel()
	return <-done
}

func ptr[T any](v T) *T { return &v }
