// Package serve wires rrguard's admission handlers into a controller-runtime manager, the same
// way for the rrguard binary, `make run` and the integration tests.
package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/webhook"
)

// Options configure one rrguard replica.
type Options struct {
	Host        string // webhook listen host; all interfaces when empty
	Port        int    // webhook listen port; 0: a free port (see Replica.WebhookAddr)
	CertDir     string // holds tls.crt and tls.key; reloaded when they change
	MetricsAddr string // host:port ("127.0.0.1:0": a free port, see Replica.MetricsAddr); "0" or "" serves no metrics
	// MetricsSecure serves metrics over HTTPS to callers the API server authenticates (a
	// TokenReview of their bearer token) and authorizes (a SubjectAccessReview of GET /metrics).
	MetricsSecure bool
	ProbeAddr     string // "0" disables /healthz and /readyz
	PprofAddr     string // serves /debug/pprof when set; off ("" or "0") by default
	// ConsistentListOnly decides every create from a consistent List of the fingerprint's RRs and
	// the mark: 2 reads per create. Off, the RR index (package rrfacts) decides where a lagging
	// answer is safe (see webhook.Namer.decide).
	ConsistentListOnly bool
	// RRNamespaces are the namespaces rrguard judges and watches; empty: every namespace.
	// Creates elsewhere are refused.
	RRNamespaces []string
	// RequestTimeout is the API server's --request-timeout (60 s when zero): no create commits
	// later than this after it began.
	RequestTimeout time.Duration
	// IndexMaxLag is how old the RR index's last proof of completeness may be for a decision to
	// use it (10 s when zero). The index decides only while ReleaseMinAge > 2 x RequestTimeout +
	// IndexMaxLag, the condition the argument in docs/design.md ("Reads") needs; otherwise every
	// decision is taken from consistent reads.
	IndexMaxLag time.Duration
	// MarksNamespace holds the high-water mark ConfigMaps (package marks): rrguard's own
	// namespace.
	MarksNamespace string
	// ReleaseMinAge is the hold: an RR keeps rrguard's finalizer this long after its creation
	// (deleted or not), then its mark covers it and the finalizer goes; marks.DefaultMinAge when
	// zero.
	ReleaseMinAge time.Duration
	// ReleaseEvery is how often the sweep looks for RRs past the hold (marks.DefaultReleaseEvery
	// when zero); ReleaseBatch bounds the RRs one round releases (marks.DefaultReleaseBatch when
	// zero).
	ReleaseEvery time.Duration
	ReleaseBatch int
	// SeedEvery repeats the seeding of marks from RRs without rrguard's finalizer; 30 s when zero.
	SeedEvery time.Duration
	// MarkHorizon removes marks older than it whose fingerprint has no RR left
	// (marks.DefaultHorizon when zero), looked for every MarkGCEvery (1 h when zero).
	MarkHorizon, MarkGCEvery time.Duration
	// BuiltinPolicies names the policies built into rrguard (config/policies, policy.BuiltinNames)
	// to enforce from the start: "remediationrequests", Kubernaut's, by default (the binary's
	// --builtin-policies); none on a cluster without Kubernaut.
	BuiltinPolicies []string
	// Policies are enforced besides the built-in ones: UniquenessPolicies for other resources. Each gets a
	// watch of its target, webhooks at webhook.PolicyPath, and marks scoped to its target; the
	// webhook configurations that send its creates here, and the RBAC on its target, are the
	// installer's (see docs/design.md, "Policies").
	Policies []*rrguardv1.UniquenessPolicy
	// PoliciesWebhookConfiguration is the pair (mutating and validating) rrguard keeps in step
	// with the cluster's UniquenessPolicies; config/default's name when empty.
	PoliciesWebhookConfiguration string
	// PolicyWebhookClient is how the API server reaches rrguard for those webhooks: a Service
	// (the chart's and config/default's) or a URL (a local control plane); each webhook gets its
	// policy's path. Its CABundle verifies rrguard's serving certificate; PolicyWebhookCAFile,
	// when set and readable, replaces it at every write (cert-manager's ca.crt beside tls.crt, so
	// rrguard writes what cert-manager's CA injector would, and the two never disagree).
	PolicyWebhookClient admissionregistrationv1.WebhookClientConfig
	PolicyWebhookCAFile string
	// ShutdownDelay keeps serving after a stop is asked for, while /readyz already fails, so that
	// endpoints drop the pod before it stops answering the API server.
	ShutdownDelay time.Duration
}

// RRPolicy is the name of the built-in RR policy: RRNamespaces sets its namespaces, and its
// webhooks also answer at the paths the RR's were served at before the engine (webhook.NamePath,
// CheckPath), which an older release's webhook configurations call through an upgrade.
const RRPolicy = "remediationrequests"

// staticPolicies are the policies a replica enforces from its start: the built-in ones enabled, then
// those given by file; namespacesFrom names, per policy whose namespaces a flag set, that flag.
func (o Options) staticPolicies() (ps []*rrguardv1.UniquenessPolicy, namespacesFrom map[string]string, err error) {
	namespacesFrom = map[string]string{}
	for _, name := range o.BuiltinPolicies {
		p, err := policy.Builtin(name)
		if err != nil {
			return nil, nil, fmt.Errorf("serve: %w", err)
		}
		if name == RRPolicy && len(o.RRNamespaces) > 0 {
			p.Spec.Target.Namespaces = o.RRNamespaces
			namespacesFrom[name] = "rrguard's --rr-namespaces flag"
		}
		ps = append(ps, p)
	}
	ps = append(ps, o.Policies...)
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.Name] {
			return nil, nil, fmt.Errorf("serve: policy %s is given twice (built in, or in two files)", p.Name)
		}
		seen[p.Name] = true
	}
	return ps, namespacesFrom, nil
}

// Scheme knows the built-in types and rrguard's UniquenessPolicy; a policy's target needs no Go
// type (the engine reads it as JSON or metadata).
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registration; cannot fail at run time
	}
	if err := rrguardv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Replica is one rrguard webhook server.
type Replica struct {
	mgr      manager.Manager
	policies *policySet
	// static are the policies enforced from the start: built in, or given by file.
	static   []string
	stopping atomic.Bool
	delay    time.Duration
	api      APIServer
	// webhookAddr and metricsAddr are where the replica's listeners are bound (metricsAddr ""
	// without a metrics server).
	webhookAddr, metricsAddr string
	listeners                []net.Listener
}

// closeListeners releases the ports New bound. A server that ran has closed its own already; one
// the manager stopped before it started serving has not.
func (r *Replica) closeListeners() {
	for _, l := range r.listeners {
		_ = l.Close()
	}
}

// New builds a replica against the API server of cfg.
func New(cfg *rest.Config, o Options) (_ *Replica, err error) {
	if o.MarksNamespace == "" {
		return nil, errors.New("serve: MarksNamespace is required (rrguard's own namespace)")
	}
	if u := o.PolicyWebhookClient.URL; u != nil {
		if err := checkWebhookURL(*u); err != nil {
			return nil, err
		}
	}
	cert := newServingCert(o.CertDir)
	server, err := newWebhookServer(o.Host, o.Port, &tls.Config{
		GetCertificate: cert.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		// HTTP/2 stays off: rapid-reset class attacks; the API server speaks HTTP/1.1 to webhooks.
		NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:        Scheme(),
		WebhookServer: server,
		// rrguard's own metrics server (newMetricsServer), bound here like the webhook's.
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: o.ProbeAddr,
		PprofBindAddress:       o.PprofAddr,
		// Every replica serves; there is nothing to lead.
		LeaderElection:          false,
		GracefulShutdownTimeout: ptr.To(30 * time.Second),
	})
	if err != nil {
		_ = server.l.Close()
		return nil, fmt.Errorf("the manager, which binds the health probe and pprof listeners: %w", err)
	}
	metricsServer, err := newMetricsServer(o.MetricsAddr, o.MetricsSecure, cfg, mgr.GetHTTPClient())
	if err != nil {
		_ = server.l.Close()
		return nil, err
	}
	r := &Replica{mgr: mgr, delay: o.ShutdownDelay, webhookAddr: server.l.Addr().String(), listeners: []net.Listener{server.l}}
	if metricsServer != nil {
		r.metricsAddr = metricsServer.Listener.Addr().String()
		r.listeners = append(r.listeners, metricsServer.Listener)
	}
	// The listeners are bound: a failure from here on must close them, or a caller that retries
	// New finds its own ports taken. (The health probe's and pprof's are the manager's, which
	// closes them only when it runs: a New that fails after binding them leaves them bound.)
	defer func() {
		if err != nil {
			r.closeListeners()
		}
	}()
	// The manager runs its webhook server only once it has been asked for it.
	mgr.GetWebhookServer()
	if metricsServer != nil {
		if err := mgr.Add(metricsServer); err != nil {
			return nil, err
		}
	}

	// Each create reads one mark shard: protobuf, which ConfigMaps speak, costs the API server
	// less than JSON. Uncached: a mark read from a lagging cache could be too low.
	protoCfg := rest.CopyConfig(cfg)
	protoCfg.ContentType = "application/vnd.kubernetes.protobuf"
	marksReader, err := client.New(protoCfg, client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return nil, err
	}
	store := marks.Store{Namespace: o.MarksNamespace, Reader: marksReader, Writer: mgr.GetClient(), Known: &marks.KnownShards{}}
	probeCtx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	api, err := ProbeAPIServer(probeCtx, cfg)
	if err != nil {
		return nil, err
	}
	api.report()
	r.api = api
	// With an unsafe lag the indexes still feed the releasers and the seeders; they only stop
	// deciding.
	indexDecides, maxLag := !o.ConsistentListOnly, time.Duration(0)
	if err := o.IndexSafety(); err != nil {
		indexDecides = false
		ctrl.Log.WithName("rrguard").Info("WARNING: the indexes will not decide; every create is decided from consistent reads", "reason", err.Error())
	}
	if indexDecides {
		_, maxLag, _ = o.lagInputs()
		indexDeciding.Set(1)
	} else {
		indexDeciding.Set(0)
	}

	// Every policy is enforced by the policy set, the same way: the built-in ones enabled, those
	// given by file, and the cluster's UniquenessPolicies.
	static, namespacesFrom, err := o.staticPolicies()
	if err != nil {
		return nil, err
	}
	ps := &policySet{r: r, cfg: cfg, o: o, store: store, maxLag: maxLag, indexDecides: indexDecides,
		live: map[string]*livePolicy{}, namespacesFrom: namespacesFrom}
	for _, p := range static {
		if _, err := ps.enforce(context.Background(), p); err != nil {
			return nil, fmt.Errorf("serve: policy %s: %w", p.Name, err)
		}
		r.static = append(r.static, p.Name)
	}
	if err := mgr.Add(ps); err != nil {
		return nil, err
	}
	r.policies = ps
	isStatic := func(name string) bool { return slices.Contains(r.static, name) }
	exists := isStatic
	if _, err := mgr.GetRESTMapper().KindFor(rrguardv1.GroupVersion.WithResource("uniquenesspolicies")); err == nil {
		if err := setupPolicyController(mgr, ps); err != nil {
			return nil, err
		}
		exists = func(name string) bool {
			var p rrguardv1.UniquenessPolicy
			return isStatic(name) || mgr.GetClient().Get(context.Background(), client.ObjectKey{Name: name}, &p) == nil
		}
	} else {
		ctrl.Log.WithName("rrguard").Info("the UniquenessPolicy CRD is not installed: only the built-in policies and --policy-files are enforced", "reason", err.Error())
	}
	server.Register("/mutate/", r.drained(ps.serve("mutate", exists)))
	server.Register("/validate/", r.drained(ps.serve("validate", exists)))
	// The paths the RR's webhooks were served at before the engine, kept through upgrades: an
	// older chart's webhook configurations call them.
	if isStatic(RRPolicy) {
		server.Register(webhook.NamePath, r.drained(ps.serveOne("mutate", RRPolicy, exists)))
		server.Register(webhook.CheckPath, r.drained(ps.serveOne("validate", RRPolicy, exists)))
	}

	if err := mgr.Add(cert); err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("serving-cert", cert.Loaded); err != nil {
		return nil, err
	}
	// A replica serves once every policy it must enforce from its start (built in, or from files)
	// decides; cluster policies report their own state in their status.
	if err := mgr.AddReadyzCheck("policies", func(*http.Request) error { return r.Seeded() }); err != nil {
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

// ErrIndexLagUnsafe says the hold is too short for the RR index to decide: the argument in
// docs/design.md ("Reads") needs ReleaseMinAge > 2 x RequestTimeout + IndexMaxLag.
var ErrIndexLagUnsafe = errors.New("the release hold is too short for the RR index to decide")

// IndexSafety is nil when the RR index may decide with these options (or is not asked to:
// ConsistentListOnly), else an ErrIndexLagUnsafe that gives the three durations. The rrguard
// binary refuses to start on it; New serves without the index, says so in its log and in
// rrguard_index_deciding.
func (o Options) IndexSafety() error {
	t, l, h := o.lagInputs()
	if o.ConsistentListOnly || h > 2*t+l {
		return nil
	}
	return fmt.Errorf("%w: --release-min-age %v must exceed 2 x --request-timeout %v + --index-max-lag %v; "+
		"lengthen the hold, or set --consistent-list-only to decide every create from consistent reads", ErrIndexLagUnsafe, h, t, l)
}

func (o Options) lagInputs() (timeout, lag, hold time.Duration) {
	timeout, lag, hold = o.RequestTimeout, o.IndexMaxLag, o.ReleaseMinAge
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	if lag == 0 {
		lag = 10 * time.Second
	}
	if hold == 0 {
		hold = marks.DefaultMinAge
	}
	return timeout, lag, hold
}

var indexDeciding = prometheus.NewGauge(prometheus.GaugeOpts{
	Name: "rrguard_index_deciding",
	Help: "1 when the RR index decides the creates it can vouch for, 0 when every create is decided from consistent reads (--consistent-list-only, or a hold too short for the index: see the start-up log).",
})

func init() { metrics.Registry.MustRegister(indexDeciding) }

// APIServer is what the replica's start-up probe found.
func (r *Replica) APIServer() APIServer { return r.api }

// WebhookAddr is the address the replica's webhook listener is bound to (host:port), the port
// resolved when Options.Port was 0.
func (r *Replica) WebhookAddr() string { return r.webhookAddr }

// MetricsAddr is the address the replica's metrics listener is bound to; "" when it serves none.
func (r *Replica) MetricsAddr() string { return r.metricsAddr }

// Index is the index of the policy named, nil when it is not enforced here (for tests that wait
// until it has seen an object).
func (r *Replica) Index(policy string) *rrfacts.Index {
	if lp := r.policies.get(policy); lp != nil {
		return lp.index
	}
	return nil
}

// Seeded is nil once every policy the replica enforces from its start (built in, or from files) has
// synced its watch and seeded its marks: the replica decides.
func (r *Replica) Seeded() error {
	for _, name := range r.static {
		lp := r.policies.get(name)
		switch {
		case lp == nil:
			return fmt.Errorf("policy %s is not enforced", name)
		case !lp.index.Synced():
			return fmt.Errorf("policy %s: the watch of %s has not synced", name, lp.compiled.GroupResource)
		}
		if err := lp.seeder.Ready(); err != nil {
			return fmt.Errorf("policy %s: %w", name, err)
		}
	}
	return nil
}

// Run serves until ctx is done, then fails readiness, waits ShutdownDelay, and stops.
func (r *Replica) Run(ctx context.Context) error {
	mgrCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer r.closeListeners()
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

// maxAdmissionTime bounds an admission request's work: the API server waits at most 30 s for a
// webhook (the largest timeoutSeconds it accepts).
const maxAdmissionTime = 30 * time.Second

// drained makes a stopping replica hand its traffic over without failing a request.
//
// Its requests' contexts outlive the server's: controller-runtime derives them from the
// manager's context, so a stop would cancel the API reads of every decision still in flight and
// refuse those creates. They are bounded by maxAdmissionTime instead, and the graceful shutdown
// waits for them.
//
// Once stopping, it answers with "Connection: close". The API server
// keeps reusing an idle kept-alive connection to a webhook pod for as long as the pod answers on
// it, endpoints or not (kubernetes/kubernetes#127335): a terminating replica would keep getting
// creates over its old connections until it exits. Closing each connection after its answer
// sends the next request through the Service, to a replica that stays.
func (r *Replica) drained(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), maxAdmissionTime)
		defer cancel()
		h.ServeHTTP(w, req.WithContext(ctx))
	})
}
