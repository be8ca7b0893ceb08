package serve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/queue"
	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/webhook"
)

// PoliciesWebhookConfiguration is the default name of the webhook configurations rrguard keeps in
// step with the UniquenessPolicies of the cluster (one webhook per enforceable policy).
const PoliciesWebhookConfiguration = "rrguard-policies"

// policyWebhookTimeout is each policy webhook's timeoutSeconds: the RR webhook's, short, as
// Gatekeeper's mutating webhook's, since a create waits for it.
const policyWebhookTimeout int32 = 5

// ErrNoWebhookClient: rrguard has no client configuration to write into the policies' webhooks.
var ErrNoWebhookClient = errors.New("rrguard has no client configuration for the policies' webhooks: set --webhook-service (or Options.PolicyWebhookClient)")

// livePolicy is one policy being enforced: its watch, releaser and seeder run until cancel.
type livePolicy struct {
	compiled   *policy.Compiled
	generation int64
	// spec is what it was built from: a change of the message alone keeps what runs (withMessage).
	spec     rrguardv1.UniquenessPolicySpec
	index    *rrfacts.Index
	seeder   *marks.Seeder
	mutate   http.Handler
	validate http.Handler
	// answer makes the webhooks' handlers for a compiled policy of this generation's target.
	answer func(*policy.Compiled) (mutate, validate http.Handler)
	starts []func(context.Context) error
	cancel context.CancelFunc
	// done counts what runs; shared by the generations that share it (withMessage).
	done *sync.WaitGroup
}

// withMessage is lp for a new generation whose spec differs from lp's in its message only: the
// same watch, index, releaser and seeder, which judge nothing by the message, with handlers that
// answer with the new one. Nothing is listed or watched again and no create waits.
func (lp *livePolicy) withMessage(c *policy.Compiled, generation int64, spec rrguardv1.UniquenessPolicySpec) *livePolicy {
	next := *lp
	next.compiled, next.generation, next.spec = c, generation, spec
	next.mutate, next.validate = lp.answer(c)
	return &next
}

// messageOnly reports whether specs a and b differ in their message alone.
func messageOnly(a, b rrguardv1.UniquenessPolicySpec) bool {
	a.Message, b.Message = "", ""
	return equality.Semantic.DeepEqual(a, b)
}

// policySet holds the policies a replica enforces besides the RR's: those of Options.Policies,
// for its whole life, and those of the cluster's UniquenessPolicies, started, restarted and
// stopped as they are created, changed and deleted.
type policySet struct {
	r            *Replica
	cfg          *rest.Config
	o            Options
	store        marks.Store
	maxLag       time.Duration
	indexDecides bool

	// namespacesFrom names, per built-in policy, the setting its namespaces come from (a flag).
	namespacesFrom map[string]string

	mu   sync.RWMutex
	ctx  context.Context // the manager's, once it runs
	live map[string]*livePolicy
}

// Start implements manager.Runnable: the static policies run until ctx is done, and so does
// every policy started later.
func (ps *policySet) Start(ctx context.Context) error {
	policyStates.add(ps)
	defer policyStates.remove(ps)
	ps.mu.Lock()
	ps.ctx = ctx
	for _, lp := range ps.live {
		ps.run(lp)
	}
	ps.mu.Unlock()
	<-ctx.Done()
	ps.mu.Lock()
	live := ps.live
	ps.live = map[string]*livePolicy{}
	ps.mu.Unlock()
	for _, lp := range live {
		lp.end()
	}
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica enforces.
func (ps *policySet) NeedLeaderElection() bool { return false }

// swapWait bounds how long a changed policy's earlier generation keeps judging while the new one
// syncs its watch and seeds its marks; past it the new one takes over, answering 503 until ready.
// The index of 100,000 objects syncs in about 20 s (docs/benchmarks.md).
const swapWait = time.Minute

// swapPoll is how often a change looks whether its new generation is ready.
const swapPoll = 50 * time.Millisecond

// policyReconcilers is how many policies the controller reconciles at once (one key is never
// reconciled twice at once): a change waiting for its new generation holds one.
const policyReconcilers = 4

// enforce compiles p and starts enforcing it. A new generation of a policy already enforced is
// made before the old one is broken: the old one keeps judging creates until the new one's watch
// has synced and its marks are seeded (or swapWait), then the webhooks switch to the new one and
// the old one stops. So a change never answers 503, and nothing waits under the set's lock:
// creates of every policy go on meanwhile. Two generations judge one target only in the sense
// that the handler looked up at a request's start serves it: each decision is one generation's.
func (ps *policySet) enforce(ctx context.Context, p *rrguardv1.UniquenessPolicy) (*livePolicy, error) {
	if old := ps.get(p.Name); old != nil && messageOnly(old.spec, p.Spec) {
		c, err := ps.compile(p)
		if err != nil {
			return nil, err
		}
		lp := old.withMessage(c, p.Generation, p.Spec)
		ps.mu.Lock()
		defer ps.mu.Unlock()
		if ps.live[p.Name] != old {
			return nil, fmt.Errorf("policy %s changed while its message was swapped; retry", p.Name)
		}
		ps.live[p.Name] = lp
		return lp, nil
	}
	lp, err := ps.build(p)
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	old := ps.live[p.Name]
	running := ps.ctx != nil
	if running {
		ps.run(lp)
	}
	if old == nil || !running {
		ps.live[p.Name] = lp
		ps.mu.Unlock()
		return lp, nil
	}
	ps.mu.Unlock()
	_ = wait.PollUntilContextTimeout(ctx, swapPoll, swapWait, true, func(context.Context) (bool, error) {
		return lp.ready() || lp.index.LastError() != nil, nil
	})
	ps.mu.Lock()
	ps.live[p.Name] = lp
	ps.mu.Unlock()
	old.end()
	return lp, nil
}

// stop ends the enforcement of policy name, if any.
func (ps *policySet) stop(name string) {
	ps.mu.Lock()
	lp := ps.live[name]
	delete(ps.live, name)
	ps.mu.Unlock()
	if lp != nil {
		lp.end()
	}
	marks.ForgetPolicy(name)
	queue.ForgetPolicy(name)
	forgetRead(name)
}

// ready: lp's watch has synced and its marks are seeded: it decides.
func (lp *livePolicy) ready() bool { return lp.index.Synced() && lp.seeder.Ready() == nil }

// end stops what runs for lp and waits for it.
func (lp *livePolicy) end() {
	if lp.cancel != nil {
		lp.cancel()
	}
	lp.done.Wait()
}

func (ps *policySet) get(name string) *livePolicy {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	return ps.live[name]
}

// run starts lp's watch, releaser and seeder; the caller holds the lock and ps.ctx is set.
func (ps *policySet) run(lp *livePolicy) {
	ctx, cancel := context.WithCancel(ps.ctx)
	lp.cancel = cancel
	for _, start := range lp.starts {
		lp.done.Add(1)
		go func() {
			defer lp.done.Done()
			if err := start(ctx); err != nil && ctx.Err() == nil {
				ctrl.Log.WithName("policies").Error(err, "enforcing a policy", "policy", lp.compiled.Policy)
			}
		}()
	}
}

// build compiles p and makes what enforces it: a watch of its target, its releaser and seeder
// (marks scoped to its target), and its webhooks.
func (ps *policySet) build(p *rrguardv1.UniquenessPolicy) (*livePolicy, error) {
	c, err := ps.compile(p)
	if err != nil {
		return nil, err
	}
	gr := c.GroupResource
	mgr := ps.r.mgr
	gvk, err := mgr.GetRESTMapper().KindFor(gr.WithVersion(c.Versions[0]))
	if err != nil {
		return nil, &targetError{fmt.Errorf("the target %s: %w", gr, err)}
	}
	// A key that is one field: read by field selector where the API server serves one on it (a
	// CRD declares it selectable), else by scanning the namespace.
	selectable := false
	if c.Read == rrguardv1.ReadFieldSelector && !strings.HasPrefix(c.KeyField, "metadata.") {
		probeNS := ""
		if len(c.Namespaces) > 0 {
			probeNS = c.Namespaces[0]
		}
		// Any other error (no RBAC yet, a busy API server): scan, and let the watch, which
		// retries, say what is wrong with the target.
		selectable, _ = probeFieldSelector(context.Background(), mgr.GetAPIReader(), gvk, c.KeyField, probeNS)
	}
	store := ps.store
	store.Scope = marks.ScopeOf(gr.Group, gr.Resource)
	releaser := &marks.Releaser{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Store: store,
		MinAge: ps.o.ReleaseMinAge, Every: ps.o.ReleaseEvery, Batch: ps.o.ReleaseBatch, Kind: gvk, Name: c.Policy}
	o := rrfacts.Options{
		Namespaces: c.Namespaces, Finalizer: marks.Finalizer, MarkKey: store.EntryKey,
		MaxLag: ps.maxLag, OnDeleting: releaser.Enqueue, Policy: c, Kind: gvk, FieldSelectable: selectable,
	}
	// A policy that holds, or held under an earlier mode, releases by key as its objects change.
	var queued *queue.Controller
	if c.CanRelease() {
		timeout, _, _ := ps.o.lagInputs()
		queued = &queue.Controller{Policy: c, Client: mgr.GetClient(), Kind: gvk, Settle: queue.Settle(timeout)}
		o.OnQueue = queued.Enqueue
	}
	index, err := rrfacts.New(ps.cfg, o)
	if err != nil {
		return nil, err
	}
	reportRead(c, index.ReadMode())
	releaser.Index = index
	seeder := &marks.Seeder{Index: index, Store: store, Every: ps.o.SeedEvery, Horizon: ps.o.MarkHorizon, GCEvery: ps.o.MarkGCEvery}
	leaveAlone := func(ns string) bool { return policy.NeverJudgedNamespace(ns, ps.o.MarksNamespace) }
	lp := &livePolicy{
		compiled: c, generation: p.Generation, spec: p.Spec, index: index, seeder: seeder,
		starts: []func(context.Context) error{index.Start, releaser.Start, seeder.Start},
		done:   &sync.WaitGroup{},
		// The webhooks' handlers for a compiled policy judged by this index.
		answer: func(c *policy.Compiled) (mutate, validate http.Handler) {
			namer := &webhook.Namer{Policy: c, Lister: index, Marks: store, Finalizer: marks.Finalizer, Ready: seeder.Ready, LeaveAlone: leaveAlone}
			if ps.indexDecides {
				namer.Index = index
			}
			if len(c.Namespaces) > 0 {
				namer.Judged = index.Watches
			}
			return &crwebhook.Admission{Handler: namer}, &crwebhook.Admission{Handler: &webhook.Checker{Policy: c, LeaveAlone: leaveAlone}}
		},
	}
	if queued != nil {
		queued.Reader = index
		if ps.indexDecides {
			queued.Index = index
		}
		queued.Census = func(now time.Time, stallAfter time.Duration) (int, time.Time, int) {
			c := index.QueueCensus(now, stallAfter)
			return c.Held, c.Oldest, c.Stalled
		}
		lp.starts = append(lp.starts, queued.Start)
	}
	lp.mutate, lp.validate = lp.answer(c)
	return lp, nil
}

// compile compiles p as this replica enforces it (the setting its namespaces come from; names
// for life, which every policy needs).
func (ps *policySet) compile(p *rrguardv1.UniquenessPolicy) (*policy.Compiled, error) {
	c, err := policy.Compile(p, ps.o.MarksNamespace)
	if err != nil {
		return nil, err
	}
	if from := ps.namespacesFrom[p.Name]; from != "" {
		c.NamespacesFrom = from
	}
	if !c.NamesForLife {
		return nil, &policy.Error{Reason: policy.ReasonInvalid, Errs: field.ErrorList{field.NotSupported(field.NewPath("spec", "namesForLife"), false, []string{"true"})}}
	}
	return c, nil
}

// targetError: the policy compiles but its target cannot be watched (unknown to the API server,
// or not readable by rrguard).
type targetError struct{ error }

func (e *targetError) Unwrap() error { return e.error }

// serve answers the webhook calls of policy paths (/mutate/<policy>, /validate/<policy>) with
// serveOne for the policy the path names.
func (ps *policySet) serve(kind string, exists func(string) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ps.serveOne(kind, strings.TrimPrefix(req.URL.Path, "/"+kind+"/"), exists).ServeHTTP(w, req)
	})
}

// serveOne answers the webhook calls of policy name: the live policy's handler; for a policy that
// exists but is not enforced yet here, 503 (retry: another replica, or this one in a moment,
// decides); for one that does not exist (deleted, its webhook not yet removed), the create passes
// untouched.
func (ps *policySet) serveOne(kind, name string, exists func(string) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		lp := ps.get(name)
		switch {
		case lp == nil:
			notEnforced(name, exists).ServeHTTP(w, req)
		case kind == "mutate":
			lp.mutate.ServeHTTP(w, req)
		default:
			lp.validate.ServeHTTP(w, req)
		}
	})
}

func notEnforced(name string, exists func(string) bool) http.Handler {
	return &crwebhook.Admission{Handler: admission.HandlerFunc(func(context.Context, admission.Request) admission.Response {
		if exists(name) {
			st := apierrors.NewServiceUnavailable("rrguard is starting to enforce policy " + name + " on this replica; retry").Status()
			return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &st}}
		}
		return admission.Allowed("rrguard enforces no policy " + name)
	})}
}

// policyController keeps the policy set and the webhook configurations in step with the
// cluster's UniquenessPolicies, and reports each policy's state in its status. Every replica runs
// it: each enforces every policy; their status writes agree but for timing (a condition is
// written true by the first replica that sees it so), and their webhook writes are idempotent.
type policyController struct {
	client.Client
	set *policySet
}

// static reports whether name is a policy enforced from the start (built in, or from a file),
// which no UniquenessPolicy of the cluster may replace or stop.
func (pc *policyController) static(name string) bool { return slices.Contains(pc.set.r.static, name) }

func (pc *policyController) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var p rrguardv1.UniquenessPolicy
	err := pc.Get(ctx, req.NamespacedName, &p)
	if apierrors.IsNotFound(err) {
		// A policy enforced from the start has no object; one of the cluster's of its name is
		// refused (conflict), so its deletion stops nothing.
		if !pc.static(req.Name) {
			pc.set.stop(req.Name)
		}
		_, err := pc.syncWebhooks(ctx)
		return reconcile.Result{}, err
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	lp := pc.set.get(p.Name)
	refusal, err := pc.conflict(ctx, &p)
	if err != nil {
		return reconcile.Result{}, err
	}
	var enforceErr error
	if refusal != nil {
		enforceErr = refusal
	}
	switch {
	case enforceErr != nil:
		if !pc.static(p.Name) {
			pc.set.stop(p.Name)
		}
		lp = nil
	case lp == nil || lp.generation != p.Generation:
		if lp, enforceErr = pc.set.enforce(ctx, &p); enforceErr != nil {
			pc.set.stop(p.Name)
		}
	}
	refused, err := pc.syncWebhooks(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	st := statusOf(&p, lp, enforceErr, refused[p.Name])
	// Another replica found this generation enforced: one still syncing does not say otherwise.
	stored := p.Status.ObservedGeneration == p.Generation && meta.IsStatusConditionTrue(p.Status.Conditions, rrguardv1.ConditionEnforced)
	if enforceErr == nil && stored && !meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced) {
		return reconcile.Result{RequeueAfter: 500 * time.Millisecond}, nil
	}
	if !reflect.DeepEqual(st, p.Status) {
		p.Status = st
		if err := pc.Status().Update(ctx, &p); err != nil && !apierrors.IsConflict(err) {
			return reconcile.Result{}, err
		}
	}
	if enforceErr == nil && !meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced) {
		return reconcile.Result{RequeueAfter: 500 * time.Millisecond}, nil
	}
	return reconcile.Result{}, nil
}

// conflict refuses a policy whose target another one judges already: two webhooks naming one
// object would each undo the other's name. A target of a policy enforced from the start (built in,
// or from a file) is that policy's; among UniquenessPolicies of one target, the oldest (then the
// first by name) is enforced.
func (pc *policyController) conflict(ctx context.Context, p *rrguardv1.UniquenessPolicy) (*policy.Error, error) {
	t := p.Spec.Target
	if pc.static(p.Name) {
		return &policy.Error{Reason: ReasonConflictingPolicy, Errs: field.ErrorList{field.Forbidden(field.NewPath("metadata", "name"),
			fmt.Sprintf("%s is the name of a policy rrguard enforces from its start (built in, or from a file): name this one otherwise", p.Name))}}, nil
	}
	for _, name := range pc.set.r.static {
		if lp := pc.set.get(name); lp != nil && lp.compiled.GroupResource.Group == t.Group && lp.compiled.GroupResource.Resource == t.Resource {
			return &policy.Error{Reason: ReasonConflictingPolicy, Errs: field.ErrorList{field.Forbidden(field.NewPath("spec", "target"),
				fmt.Sprintf("%s is judged by policy %s, which rrguard enforces from its start (built in, or from a file)", policy.TargetString(t), name))}}, nil
		}
	}
	var list rrguardv1.UniquenessPolicyList
	if err := pc.List(ctx, &list); err != nil {
		return nil, err
	}
	for i := range list.Items {
		o := &list.Items[i]
		if o.Name == p.Name || o.Spec.Target.Group != t.Group || o.Spec.Target.Resource != t.Resource {
			continue
		}
		if o.CreationTimestamp.Before(&p.CreationTimestamp) || (o.CreationTimestamp.Equal(&p.CreationTimestamp) && o.Name < p.Name) {
			return &policy.Error{Reason: ReasonConflictingPolicy, Errs: field.ErrorList{field.Forbidden(field.NewPath("spec", "target"),
				fmt.Sprintf("policy %s judges %s already: one policy per resource", o.Name, policy.TargetString(t)))}}, nil
		}
	}
	return nil, nil
}

// Reasons a policy's conditions give, besides policy.Error's.
const (
	// ReasonConflictingPolicy: another policy judges the target.
	ReasonConflictingPolicy = "ConflictingPolicy"
	ReasonCompiled          = "Compiled"
	ReasonNotCompiled       = "NotCompiled"
	// ReasonTargetNotWatchable: the API server does not serve the target, or rrguard may not read it.
	ReasonTargetNotWatchable = "TargetNotWatchable"
	ReasonSynced             = "Synced"
	ReasonSyncing            = "Syncing"
	ReasonEnforced           = "Enforced"
	// ReasonNotReady: the watch has not synced or the marks are not seeded yet.
	ReasonNotReady = "NotReady"
	// NameChecked's reasons: who checks names, or that the API server refused the generated check
	// (its answer in the message).
	ReasonNameCheckAPIServer = "APIServer"
	ReasonNameCheckWebhook   = "Webhook"
	ReasonNameCheckRefused   = "NameCheckRefused"
	ReasonNameCheckNone      = "CreatorsNames"
)

// statusOf is a policy's status as this replica sees it.
func statusOf(p *rrguardv1.UniquenessPolicy, lp *livePolicy, enforceErr, nameCheckErr error) rrguardv1.UniquenessPolicyStatus {
	st := rrguardv1.UniquenessPolicyStatus{ObservedGeneration: p.Generation}
	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		old := meta.FindStatusCondition(p.Status.Conditions, t)
		c := metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: p.Generation, LastTransitionTime: metav1.Now()}
		if old != nil && old.Status == s && old.Reason == reason && old.Message == msg && old.ObservedGeneration == p.Generation {
			c.LastTransitionTime = old.LastTransitionTime
		}
		st.Conditions = append(st.Conditions, c)
	}
	var pe *policy.Error
	var te *targetError
	switch {
	case errors.As(enforceErr, &pe):
		set(rrguardv1.ConditionCompiled, false, pe.Reason, pe.Error())
		set(rrguardv1.ConditionWatching, false, ReasonNotCompiled, "a policy that does not compile is never enforced")
		set(rrguardv1.ConditionEnforced, false, pe.Reason, "not enforced: "+pe.Error())
		return st
	case errors.As(enforceErr, &te), enforceErr != nil:
		set(rrguardv1.ConditionCompiled, true, ReasonCompiled, "every expression compiled within the cost budget")
		set(rrguardv1.ConditionWatching, false, ReasonTargetNotWatchable, enforceErr.Error())
		set(rrguardv1.ConditionEnforced, false, ReasonTargetNotWatchable, "not enforced: "+enforceErr.Error())
		return st
	}
	set(rrguardv1.ConditionCompiled, true, ReasonCompiled, "every expression compiled within the cost budget")
	st.ConsistentRead = lp.index.ReadMode()
	st.Objects = int64(lp.index.Len())
	synced := lp.index.Synced()
	switch {
	case synced:
		set(rrguardv1.ConditionWatching, true, ReasonSynced, "rrguard watches "+lp.compiled.GroupResource.String())
	case lp.index.LastError() != nil:
		set(rrguardv1.ConditionWatching, false, ReasonTargetNotWatchable, lp.index.LastError().Error())
	default:
		set(rrguardv1.ConditionWatching, false, ReasonSyncing, "the watch of "+lp.compiled.GroupResource.String()+" has not synced yet")
	}
	if ready := lp.seeder.Ready(); synced && ready == nil {
		set(rrguardv1.ConditionEnforced, true, ReasonEnforced, "creates of "+lp.compiled.GroupResource.String()+" are judged")
	} else {
		set(rrguardv1.ConditionEnforced, false, ReasonNotReady, "the watch has not synced, or the marks are not seeded yet")
	}
	switch {
	case !lp.compiled.Names():
		set(rrguardv1.ConditionNameChecked, true, ReasonNameCheckNone, "a "+string(lp.compiled.Mode())+" policy keeps the creators' names: there is no name to check")
	case lp.compiled.NameCheck == rrguardv1.NameCheckWebhook:
		set(rrguardv1.ConditionNameChecked, true, ReasonNameCheckWebhook, "rrguard's validating webhook checks every new object's final name")
	case nameCheckErr != nil:
		set(rrguardv1.ConditionNameChecked, false, ReasonNameCheckRefused, "the API server refused the generated name check: "+nameCheckErr.Error())
	default:
		set(rrguardv1.ConditionNameChecked, true, ReasonNameCheckAPIServer, "the API server checks every new object's final name (ValidatingAdmissionPolicy "+policy.GeneratedName(p.Name)+")")
	}
	return st
}

// syncWebhooks makes the policies' webhook configurations hold one webhook per enforceable policy
// (compiled, target known), calling rrguard as Options.PolicyWebhookClient says, for creates of the
// policy's target and versions. The configurations' own metadata (cert-manager's CA injection
// annotation, say) is the installer's and left as stored.
//
// It returns, by policy, the name checks the API server refused (an invalid object: a name too
// long, an expression its CEL does not know), which are reported in the policy's status instead of
// retried; any other error is returned.
func (pc *policyController) syncWebhooks(ctx context.Context) (refused map[string]error, err error) {
	base, err := pc.set.o.policyWebhookClient()
	if err != nil {
		return nil, err
	}
	policiesName := pc.set.o.PoliciesWebhookConfiguration
	if policiesName == "" {
		policiesName = PoliciesWebhookConfiguration
	}
	var list rrguardv1.UniquenessPolicyList
	if err := pc.List(ctx, &list); err != nil {
		return nil, err
	}
	slices.SortFunc(list.Items, func(a, b rrguardv1.UniquenessPolicy) int { return strings.Compare(a.Name, b.Name) })
	var mut []admissionregistrationv1.MutatingWebhook
	var val []admissionregistrationv1.ValidatingWebhook
	// The policies whose names the API server checks (NameCheck APIServer).
	var checks []*policy.Compiled
	for i := range list.Items {
		p := &list.Items[i]
		// What is enforced now, of whichever generation: a change being made keeps its earlier
		// generation's webhook until the new one takes over. A cluster policy named as one
		// enforced from the start is refused: the live one of that name is not its.
		lp := pc.set.get(p.Name)
		if lp == nil || pc.static(p.Name) {
			continue
		}
		// A policy whose target cannot be watched (no RBAC, say) is not enforced: its target's
		// creates are not sent here to fail. One still syncing is: they get 503 until it has.
		if !lp.index.Synced() && lp.index.LastError() != nil {
			continue
		}
		c := lp.compiled
		rules := []admissionregistrationv1.RuleWithOperations{{
			Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
			Rule: admissionregistrationv1.Rule{APIGroups: []string{c.GroupResource.Group}, APIVersions: c.Versions, Resources: []string{c.GroupResource.Resource},
				Scope: ptr.To(admissionregistrationv1.AllScopes)},
		}}
		cc := func(kind string) admissionregistrationv1.WebhookClientConfig {
			c := *base.DeepCopy()
			path := webhook.PolicyPath(kind, p.Name)
			switch {
			case c.Service != nil:
				c.Service.Path = &path
			case c.URL != nil:
				// policyWebhookClient checked that it parses.
				u, _ := url.Parse(*c.URL)
				u.Path, u.RawPath = path, ""
				c.URL = ptr.To(u.String())
			}
			return c
		}
		name := policy.GeneratedName(p.Name)
		sel := pc.judgedNamespaces(c)
		// Every field the API server would default is written as it stores it, so that what is
		// stored equals what is wanted and an unchanged set of policies writes nothing.
		mut = append(mut, admissionregistrationv1.MutatingWebhook{
			Name: name, ClientConfig: cc("mutate"), Rules: rules, NamespaceSelector: sel, ObjectSelector: &metav1.LabelSelector{},
			SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone), AdmissionReviewVersions: []string{"v1"},
			FailurePolicy: ptr.To(admissionregistrationv1.Fail), TimeoutSeconds: ptr.To(policyWebhookTimeout),
			MatchPolicy: ptr.To(admissionregistrationv1.Equivalent), ReinvocationPolicy: ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
		})
		switch {
		case !c.Names():
			// Queue and Replace keep the creators' names: no name to check.
		case c.NameCheck == rrguardv1.NameCheckWebhook:
			val = append(val, admissionregistrationv1.ValidatingWebhook{
				Name: name, ClientConfig: cc("validate"), Rules: rules, NamespaceSelector: sel, ObjectSelector: &metav1.LabelSelector{},
				SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone), AdmissionReviewVersions: []string{"v1"},
				FailurePolicy: ptr.To(admissionregistrationv1.Fail), TimeoutSeconds: ptr.To(policyWebhookTimeout),
				MatchPolicy: ptr.To(admissionregistrationv1.Equivalent),
			})
		default:
			checks = append(checks, c)
		}
	}
	// A name check goes before the webhook that names, and comes after it: never a check of names
	// no one gives. One that the validating webhook takes over goes after that webhook comes: never
	// a moment without a check. (The API server loads each kind of configuration on its own, so
	// this orders the writes, not what it applies in the moment between them.)
	wantChecks, naming := map[string]bool{}, map[string]bool{}
	for _, c := range checks {
		wantChecks[policy.GeneratedName(c.Policy)] = true
	}
	for _, w := range mut {
		naming[w.Name] = true
	}
	if err := pc.deleteNameChecks(ctx, naming); err != nil {
		return nil, err
	}
	meta := metav1.ObjectMeta{Name: policiesName, Labels: map[string]string{"app.kubernetes.io/managed-by": "rrguard"}}
	if err := upsert(ctx, pc.Client, &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: meta, Webhooks: mut},
		func(cur, want *admissionregistrationv1.MutatingWebhookConfiguration) bool {
			keepCABundles(want.Webhooks, cur.Webhooks,
				func(w *admissionregistrationv1.MutatingWebhook) *admissionregistrationv1.WebhookClientConfig {
					return &w.ClientConfig
				},
				func(w *admissionregistrationv1.MutatingWebhook) string { return w.Name })
			same := reflect.DeepEqual(cur.Webhooks, want.Webhooks) || (len(cur.Webhooks) == 0 && len(want.Webhooks) == 0)
			cur.Webhooks = want.Webhooks
			return same
		}); err != nil {
		return nil, err
	}
	if refused, err = pc.writeNameChecks(ctx, policiesName, checks); err != nil {
		return nil, err
	}
	if err := upsert(ctx, pc.Client, &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: meta, Webhooks: val},
		func(cur, want *admissionregistrationv1.ValidatingWebhookConfiguration) bool {
			keepCABundles(want.Webhooks, cur.Webhooks,
				func(w *admissionregistrationv1.ValidatingWebhook) *admissionregistrationv1.WebhookClientConfig {
					return &w.ClientConfig
				},
				func(w *admissionregistrationv1.ValidatingWebhook) string { return w.Name })
			same := reflect.DeepEqual(cur.Webhooks, want.Webhooks) || (len(cur.Webhooks) == 0 && len(want.Webhooks) == 0)
			cur.Webhooks = want.Webhooks
			return same
		}); err != nil {
		return nil, err
	}
	return refused, pc.deleteNameChecks(ctx, wantChecks)
}

// judgedNamespaces selects the namespaces of c's target that its webhooks and name check apply to.
// The namespaces no policy may judge are never sent: an outage of rrguard must not stop
// kube-system's Jobs, say.
func (pc *policyController) judgedNamespaces(c *policy.Compiled) *metav1.LabelSelector {
	if len(c.Namespaces) > 0 {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: c.Namespaces}}}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: policy.NeverJudgedNamespaces(pc.set.o.MarksNamespace)}}}
}

// writeNameChecks writes the API server's name check of each policy in checks. Each is owned by the policies' MutatingWebhookConfiguration
// (mutatingName), so that when an uninstall deletes the webhook that names, the garbage collector
// deletes the checks of those names: no check outlives the naming.
func (pc *policyController) writeNameChecks(ctx context.Context, mutatingName string, checks []*policy.Compiled) (map[string]error, error) {
	if len(checks) == 0 {
		return nil, nil
	}
	var owner admissionregistrationv1.MutatingWebhookConfiguration
	if err := pc.Get(ctx, client.ObjectKey{Name: mutatingName}, &owner); err != nil {
		return nil, err
	}
	ref := metav1.OwnerReference{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration", Name: owner.Name, UID: owner.UID}
	refused := map[string]error{}
	for _, c := range checks {
		vap, bind := c.NameCheckPolicy(policy.GeneratedName(c.Policy), pc.judgedNamespaces(c))
		vap.OwnerReferences, bind.OwnerReferences = []metav1.OwnerReference{ref}, []metav1.OwnerReference{ref}
		err := upsert(ctx, pc.Client, vap, mergeGenerated(func(v *admissionregistrationv1.ValidatingAdmissionPolicy) any { return &v.Spec }))
		if err == nil {
			err = upsert(ctx, pc.Client, bind, mergeGenerated(func(b *admissionregistrationv1.ValidatingAdmissionPolicyBinding) any { return &b.Spec }))
		}
		switch {
		case apierrors.IsInvalid(err):
			// No check rather than a stale one: an earlier generation's would check names against
			// a key the policy no longer has.
			refused[c.Policy] = err
			for _, o := range []client.Object{bind, vap} {
				if err := pc.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
					return nil, err
				}
			}
		case err != nil:
			return nil, err
		}
	}
	return refused, nil
}

// mergeGenerated is upsert's merge for an object rrguard generates whole: its spec (what spec points
// to), labels and owners are rrguard's.
func mergeGenerated[T client.Object](spec func(T) any) func(cur, want T) bool {
	return func(cur, want T) bool {
		same := reflect.DeepEqual(spec(cur), spec(want)) && reflect.DeepEqual(cur.GetLabels(), want.GetLabels()) &&
			reflect.DeepEqual(cur.GetOwnerReferences(), want.GetOwnerReferences())
		reflect.ValueOf(spec(cur)).Elem().Set(reflect.ValueOf(spec(want)).Elem())
		cur.SetLabels(want.GetLabels())
		cur.SetOwnerReferences(want.GetOwnerReferences())
		return same
	}
}

// deleteNameChecks deletes the name checks rrguard wrote that are not in want: their policy is gone,
// not enforced, or has its names checked by the validating webhook now.
func (pc *policyController) deleteNameChecks(ctx context.Context, want map[string]bool) error {
	// Bindings first: a policy without its binding checks nothing.
	for _, list := range []client.ObjectList{&admissionregistrationv1.ValidatingAdmissionPolicyBindingList{}, &admissionregistrationv1.ValidatingAdmissionPolicyList{}} {
		if err := pc.List(ctx, list, client.HasLabels{policy.NameCheckPolicyLabel}); err != nil {
			return err
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			return err
		}
		for _, it := range items {
			if o, ok := it.(client.Object); ok && !want[o.GetName()] {
				if err := pc.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
					return err
				}
			}
		}
	}
	return nil
}

// keepCABundles gives each wanted webhook that has no CA bundle of rrguard's the one stored (its
// own, else any of the configuration's: cert-manager's injector writes one bundle into all), so
// that a write never removes the CA the API server needs. cc and name read a webhook's client
// configuration and name.
func keepCABundles[W any](want, cur []W, cc func(*W) *admissionregistrationv1.WebhookClientConfig, name func(*W) string) {
	var anyBundle []byte
	byName := map[string][]byte{}
	for i := range cur {
		if b := cc(&cur[i]).CABundle; len(b) > 0 {
			anyBundle, byName[name(&cur[i])] = b, b
		}
	}
	for i := range want {
		if w := cc(&want[i]); len(w.CABundle) == 0 {
			w.CABundle = anyBundle
			if b, ok := byName[name(&want[i])]; ok {
				w.CABundle = b
			}
		}
	}
}

// upsert creates want, or makes the stored object take want's content (merge reports whether it
// already had it); a conflict with another replica's identical write is not an error.
func upsert[T client.Object](ctx context.Context, c client.Client, want T, merge func(cur, want T) bool) error {
	cur := want.DeepCopyObject().(T)
	err := c.Get(ctx, client.ObjectKeyFromObject(want), cur)
	if apierrors.IsNotFound(err) {
		if err := c.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	if merge(cur, want) {
		return nil
	}
	if err := c.Update(ctx, cur); err != nil && !apierrors.IsConflict(err) {
		return err
	}
	return nil
}

func setupPolicyController(mgr ctrl.Manager, set *policySet) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("uniqueness-policy").
		For(&rrguardv1.UniquenessPolicy{}).
		// A change waits for its new generation (enforce, up to swapWait): others go on meanwhile.
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true), MaxConcurrentReconciles: policyReconcilers}).
		Complete(&policyController{Client: mgr.GetClient(), set: set})
}

// policyWebhookClient is the client configuration every policy webhook starts from: Options'
// Service or URL, with the CA bundle read afresh from PolicyWebhookCAFile where it is set and
// readable (a rotated CA is picked up at the next write).
// checkWebhookURL refuses a URL the API server would refuse in a webhook's client configuration.
func checkWebhookURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("the policies' webhook URL: %w", err)
	case u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("the policies' webhook URL %q: want https://host[:port], without user, query or fragment, as a webhook's client configuration takes", s)
	}
	return nil
}

func (o Options) policyWebhookClient() (admissionregistrationv1.WebhookClientConfig, error) {
	c := *o.PolicyWebhookClient.DeepCopy()
	switch {
	case c.Service == nil && c.URL == nil:
		return c, ErrNoWebhookClient
	case c.URL != nil:
		if err := checkWebhookURL(*c.URL); err != nil {
			return c, err
		}
	case c.Service.Port == nil:
		c.Service.Port = ptr.To[int32](443) // the API server's default, written so it compares equal
	}
	if o.PolicyWebhookCAFile != "" {
		// No such file: the CA comes from cert-manager's injector alone (keepCABundles). There
		// but unreadable or empty (a secret being rotated, say): write nothing now, rather than
		// webhooks without the CA, which would fail every create of their targets.
		ca, err := os.ReadFile(o.PolicyWebhookCAFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil || len(ca) == 0:
			return c, fmt.Errorf("the CA bundle for the policies' webhooks, %s: %v (empty or unreadable)", o.PolicyWebhookCAFile, err)
		default:
			c.CABundle = ca
		}
	}
	return c, nil
}
