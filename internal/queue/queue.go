// Package queue releases and cancels what a Queue or Replace policy holds (package policy's
// HoldPatch puts every create of such a policy on hold at admission). Its state is the objects:
// which are held, their order and what was cancelled are read from what rrguard wrote on them and
// from their own fields, as of now, at every step, so a replica that starts, or all of them
// restarted, carries on where the last left. It keeps no queue of its own beyond the keys to look
// at, which the index gives again on every relist.
//
// There is no leader: every replica runs the controller of every policy. Two replicas that plan
// one key plan the same release (decision.PlanKey, over consistent reads), and a release is a
// JSON patch that tests rrguard still holds the object, so the API server applies it once.
package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/policy"
)

// KeyReader reads, as of now, the facts of every object of one key (rrfacts.Index.ReadKey).
type KeyReader interface {
	ReadKey(ctx context.Context, namespace, keyHex, key string) ([]decision.Fact, error)
}

// Index is rrguard's watch of the target (rrfacts.Index): a key's facts as of a snapshot of the
// API server's commits, and the instant it is complete as of, or an error when it cannot vouch.
type Index interface {
	Snapshot(namespace, keyHex string) ([]decision.Fact, time.Time, error)
	// NoteWritten: this process's write of an object was answered with rv (see rrfacts).
	NoteWritten(namespace, name, rv string, sent time.Time)
}

// Key is one key's queue: what the controller reconciles.
type Key struct{ Namespace, KeyHex, Key string }

// Controller releases and cancels one policy's held objects, key by key.
type Controller struct {
	Policy *policy.Compiled
	Reader KeyReader
	// Index, when set, plans a key from the index where it can vouch for the settled objects
	// (plan); nil plans every key from a consistent read.
	Index Index
	// Client writes the releases and cancels (JSON patches and deletes, as metadata).
	Client client.Client
	Kind   schema.GroupVersionKind
	// Settle is how long after its admission an object may be released (Settle, decision.Rule).
	Settle time.Duration
	// Census, when set, counts what the policy's queues hold (rrfacts.Index.QueueCensus): the
	// controller exports it every censusEvery.
	Census func(now time.Time, stallAfter time.Duration) (held int, oldest time.Time, stalled int)
	Now    func() time.Time // time.Now when nil

	once    sync.Once
	queue   workqueue.TypedRateLimitingInterface[Key]
	ctrl    controller.TypedController[Key]
	ctrlErr error
}

// MaxClockSkew is how far apart rrguard's replicas' clocks may be: an object's admission instant
// is one replica's clock, the settle check another's (clocks kept by NTP, as the API server's
// own leases and certificates assume).
const MaxClockSkew = time.Second

// Settle is the settle time (decision.Rule.Settle) under the API server's request bound: every
// object admitted before an instant has been stored or refused Settle after it.
func Settle(requestTimeout time.Duration) time.Duration { return requestTimeout + MaxClockSkew }

// controllerName prefixes the name of a policy's queue controller (its metrics' and logs' label).
const controllerName = "queue-"

// workers: each reconcile is a read and a write or two waiting on the API server; keys are
// independent, so several wait in parallel.
const workers = 8

// contendedRetry: how soon a key whose write lost to another replica's is planned again; the
// other has written by then, and the fresh read shows it.
const contendedRetry = 100 * time.Millisecond

// settleSlack is added to a recheck so that the object it waits for has settled when it runs.
const settleSlack = 10 * time.Millisecond

var (
	releases = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_queue_releases_total",
		Help: "Held objects released, by policy.",
	}, []string{"policy"})
	cancellations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_queue_cancellations_total",
		Help: "Objects cancelled by a Replace policy, by policy and whether they were held.",
	}, []string{"policy", "held"})
	waits = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rrguard_queue_wait_seconds",
		Help:    "How long each released object was held, from its admission to its release, by policy.",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 18), // 0.1 s to about 3.6 h
	}, []string{"policy"})
	lifts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_queue_lifted_total",
		Help: "Held objects whose hold someone else lifted (started or cancelled by hand): rrguard dropped its annotation and counts them released, by policy.",
	}, []string{"policy"})
	heldNow = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_queue_held",
		Help: "Objects rrguard holds to release later, as of the last census, by policy.",
	}, []string{"policy"})
	oldestWait = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_queue_oldest_wait_seconds",
		Help: "How long the oldest object rrguard holds has existed, as of the last census, by policy (0 when none is held).",
	}, []string{"policy"})
	plans = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rrguard_queue_plans_total",
		Help: "Plans of a key's queue, by policy and what they read: the index, or a consistent read of the key's objects.",
	}, []string{"policy", "read"})
	stalled = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_queue_stalled_keys",
		Help: "Keys that hold objects and have released none for longer than the policy's spec.concurrency.stallAfter, as of the last census, by policy.",
	}, []string{"policy"})
)

func init() {
	metrics.Registry.MustRegister(releases, lifts, cancellations, waits, heldNow, oldestWait, stalled, plans)
}

// censusEvery is how often a policy's queue gauges are counted: a walk of the index under its
// read lock, as the seeding pass's.
const censusEvery = 10 * time.Second

// ForgetPolicy drops a deleted policy's series.
func ForgetPolicy(name string) {
	releases.DeleteLabelValues(name)
	lifts.DeleteLabelValues(name)
	cancellations.DeletePartialMatch(prometheus.Labels{"policy": name})
	plans.DeletePartialMatch(prometheus.Labels{"policy": name})
	for _, v := range []*prometheus.GaugeVec{heldNow, oldestWait, stalled} {
		v.DeleteLabelValues(name)
	}
	waits.DeleteLabelValues(name)
}

// init builds the queue the index feeds (Enqueue may come before Start) and the controller that
// drains it: controller-runtime's workers, rate-limited retries, panic recovery and metrics.
func (c *Controller) init() (controller.TypedController[Key], error) {
	c.once.Do(func() {
		name := controllerName + c.Policy.Policy
		c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[Key](),
			workqueue.TypedRateLimitingQueueConfig[Key]{Name: name})
		skip := true // a policy's next generation starts under the same name while the last stops
		log := ctrl.Log.WithName("queue").WithValues("policy", c.Policy.Policy)
		c.ctrl, c.ctrlErr = controller.NewTypedUnmanaged(name, controller.TypedOptions[Key]{
			Reconciler:              reconcile.TypedFunc[Key](c.Reconcile),
			MaxConcurrentReconciles: workers,
			SkipNameValidation:      &skip,
			LogConstructor: func(k *Key) logr.Logger {
				if k == nil {
					return log
				}
				return log.WithValues("namespace", k.Namespace, "key", k.Key)
			},
			NewQueue: func(string, workqueue.TypedRateLimiter[Key]) workqueue.TypedRateLimitingInterface[Key] {
				return c.queue
			},
		})
	})
	return c.ctrl, c.ctrlErr
}

// Enqueue asks the controller to plan a key's queue (rrfacts.Options.OnQueue).
func (c *Controller) Enqueue(namespace, keyHex, key string) {
	if _, err := c.init(); err != nil {
		return // Start fails with the same error
	}
	c.queue.Add(Key{Namespace: namespace, KeyHex: keyHex, Key: key})
}

// Start runs the controller, and the census, until ctx is done.
func (c *Controller) Start(ctx context.Context) error {
	ct, err := c.init()
	if err != nil {
		return err
	}
	if c.Census != nil {
		go c.census(ctx)
	}
	return ct.Start(ctx)
}

func (c *Controller) census(ctx context.Context) {
	t := time.NewTicker(censusEvery)
	defer t.Stop()
	for {
		now := c.now()
		held, oldest, n := c.Census(now, c.Policy.StallAfter())
		heldNow.WithLabelValues(c.Policy.Policy).Set(float64(held))
		wait := 0.0
		if held > 0 {
			wait = now.Sub(oldest).Seconds()
		}
		oldestWait.WithLabelValues(c.Policy.Policy).Set(wait)
		stalled.WithLabelValues(c.Policy.Policy).Set(float64(n))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica plans every key.
func (c *Controller) NeedLeaderElection() bool { return false }

func (c *Controller) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Reconcile plans one key (plan) and writes the plan: lifted holds' annotations dropped, then
// cancels (Replace), then releases. A write another replica made first (a failed test, a conflict)
// is not an error: the key is planned again from a fresh read.
func (c *Controller) Reconcile(ctx context.Context, k Key) (reconcile.Result, error) {
	if !c.Policy.CanRelease() {
		// A Forbid policy whose spec no longer says how to release what an earlier mode held:
		// those objects stay held (docs/design.md, "A mode changed while objects are held").
		return reconcile.Result{}, nil
	}
	now := c.now()
	plan, err := c.plan(ctx, k, now)
	if err != nil {
		return reconcile.Result{}, stopping(ctx, fmt.Errorf("reading the key's objects: %w", err))
	}
	steps := []struct {
		facts []decision.Fact
		write func(decision.Fact) error
		done  func(decision.Fact)
		// own: a failure holds back only this object's later writes, not the key's.
		own bool
	}{
		// Holds someone else lifted go first: a cancel of such an object tests that rrguard's
		// annotation is gone. Releases do not depend on them.
		{own: true, facts: plan.Lift, write: func(f decision.Fact) error {
			return c.patch(ctx, k.Namespace, f.Name, c.Policy.LiftPatch())
		}, done: func(decision.Fact) { lifts.WithLabelValues(c.Policy.Policy).Inc() }},
		{facts: plan.Cancel, write: func(f decision.Fact) error { return c.cancel(ctx, k.Namespace, f, now) }, done: func(f decision.Fact) {
			cancellations.WithLabelValues(c.Policy.Policy, fmt.Sprint(f.Held)).Inc()
		}},
		{facts: plan.Release, write: func(f decision.Fact) error {
			return c.patch(ctx, k.Namespace, f.Name, c.Policy.ReleasePatch())
		}, done: func(f decision.Fact) {
			releases.WithLabelValues(c.Policy.Policy).Inc()
			waits.WithLabelValues(c.Policy.Policy).Observe(c.now().Sub(f.Queued).Seconds())
		}},
	}
	// A write lost to another writer makes the key contended (planned again from a fresh read);
	// any other error ends the pass, or, in a step of its own, holds back its object's writes.
	contended := false
	var failed error
	heldBack := map[string]bool{}
	for _, st := range steps {
		for _, f := range st.facts {
			if heldBack[f.Name] {
				continue
			}
			switch err := st.write(f); {
			case lost(err):
				contended = true
			case err != nil && st.own:
				heldBack[f.Name], failed = true, err
			case err != nil:
				return reconcile.Result{}, stopping(ctx, err)
			default:
				st.done(f)
			}
		}
	}
	if failed != nil {
		return reconcile.Result{}, stopping(ctx, failed)
	}
	switch {
	case contended:
		return reconcile.Result{RequeueAfter: contendedRetry}, nil
	case !plan.Recheck.IsZero():
		return reconcile.Result{RequeueAfter: plan.Recheck.Sub(now) + settleSlack}, nil
	}
	return reconcile.Result{}, nil
}

// plan plans k from the index where it can, else from a consistent read of the key's objects.
//
// The index is a snapshot of the API server's commits in their order, as a consistent read is,
// only older: what PlanKey's argument needs of a read is that it shows every settled object, and
// the index shows every object admitted more than Settle before the instant it is complete as of
// (asOf: it has seen an object created then, or the echo of a write this process sent then, and
// every object admitted Settle before that was stored before it). So the plan is made as of asOf,
// however stale: a stale snapshot shows releases and ends late, never early, so it releases no
// more than a fresh read would, and what it releases again fails the patch's test. Where the
// index's plan waits for an object the clock says has settled (nothing proved the index complete
// since) and a slot is free for it, a consistent read plans instead; its release's echo proves the
// index again.
func (c *Controller) plan(ctx context.Context, k Key, now time.Time) (decision.Plan, error) {
	rule := c.Policy.Rule(c.Settle)
	if c.Index != nil {
		facts, asOf, err := c.Index.Snapshot(k.Namespace, k.KeyHex)
		if err == nil {
			at := now
			if asOf.Before(now) {
				at = asOf
			}
			p := decision.PlanKey(facts, rule, at)
			if p.Full {
				// No slot left: objects the index cannot vouch settled would not be released
				// either; the end of one in flight, an event, moves the queue.
				p.Recheck = time.Time{}
			}
			if p.Recheck.IsZero() || p.Recheck.After(now) {
				plans.WithLabelValues(c.Policy.Policy, "index").Inc()
				return p, nil
			}
		}
	}
	facts, err := c.Reader.ReadKey(ctx, k.Namespace, k.KeyHex, k.Key)
	if err != nil {
		return decision.Plan{}, err
	}
	plans.WithLabelValues(c.Policy.Policy, "consistent").Inc()
	return decision.PlanKey(facts, rule, now), nil
}

// stopping drops err when ctx is done: a policy's next generation carries on from the objects.
func stopping(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// lost: a write whose test or precondition failed, or whose object is gone: another replica (or
// the user) changed it since the read.
func lost(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsConflict(err) || apierrors.IsNotFound(err)
}

func (c *Controller) object(namespace, name string) *metav1.PartialObjectMetadata {
	o := &metav1.PartialObjectMetadata{}
	o.SetGroupVersionKind(c.Kind)
	o.Namespace, o.Name = namespace, name
	return o
}

func (c *Controller) patch(ctx context.Context, namespace, name string, ops any) error {
	b, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	o := c.object(namespace, name)
	sent := c.now()
	if err := c.Client.Patch(ctx, o, client.RawPatch(types.JSONPatchType, b)); err != nil {
		return err
	}
	if c.Index != nil {
		// Its echo in the watch proves the index complete as of sent: the next plans of a quiet
		// key read nothing.
		c.Index.NoteWritten(namespace, name, o.ResourceVersion, sent)
	}
	return nil
}

// cancel ends an older object under Replace: the policy's patch (held or not, tested), or its
// deletion, in the foreground so that the object stays, not in flight but being deleted, until
// what it runs is gone, which is what waitForEnd waits for.
func (c *Controller) cancel(ctx context.Context, namespace string, f decision.Fact, now time.Time) error {
	ops, del := c.Policy.CancelPatch(f.Held, now)
	if del {
		err := c.Client.Delete(ctx, c.object(namespace, f.Name), client.PropagationPolicy(metav1.DeletePropagationForeground))
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	return c.patch(ctx, namespace, f.Name, ops)
}
