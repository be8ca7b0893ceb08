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

// Key is one key's queue: what the controller reconciles.
type Key struct{ Namespace, KeyHex, Key string }

// Controller releases and cancels one policy's held objects, key by key.
type Controller struct {
	Policy *policy.Compiled
	Reader KeyReader
	// Client writes the releases and cancels (JSON patches and deletes, as metadata).
	Client client.Client
	Kind   schema.GroupVersionKind
	// Settle is the API server's bound on a request (decision.Rule.Settle).
	Settle time.Duration
	Now    func() time.Time // time.Now when nil

	once    sync.Once
	queue   workqueue.TypedRateLimitingInterface[Key]
	ctrl    controller.TypedController[Key]
	ctrlErr error
}

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
)

func init() { metrics.Registry.MustRegister(releases, cancellations, waits) }

// ForgetPolicy drops a deleted policy's series.
func ForgetPolicy(name string) {
	releases.DeleteLabelValues(name)
	cancellations.DeletePartialMatch(prometheus.Labels{"policy": name})
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

// Start runs the controller until ctx is done.
func (c *Controller) Start(ctx context.Context) error {
	ct, err := c.init()
	if err != nil {
		return err
	}
	return ct.Start(ctx)
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica plans every key.
func (c *Controller) NeedLeaderElection() bool { return false }

func (c *Controller) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Reconcile plans one key from a consistent read of its objects and writes the plan: cancels
// first (Replace), then releases. A write another replica made first (a failed test, a conflict)
// is not an error: the key is planned again from a fresh read.
func (c *Controller) Reconcile(ctx context.Context, k Key) (reconcile.Result, error) {
	if !c.Policy.CanRelease() {
		// A Forbid policy whose spec no longer says how to release what an earlier mode held:
		// those objects stay held (docs/design.md, "A mode changed while objects are held").
		return reconcile.Result{}, nil
	}
	facts, err := c.Reader.ReadKey(ctx, k.Namespace, k.KeyHex, k.Key)
	if err != nil {
		return reconcile.Result{}, stopping(ctx, fmt.Errorf("reading the key's objects: %w", err))
	}
	now := c.now()
	plan := decision.PlanKey(facts, c.Policy.Rule(c.Settle), now)
	contended := false
	// Each write of the plan: one lost to another writer makes the key contended (planned again
	// from a fresh read); any other error ends the pass.
	each := func(fs []decision.Fact, write func(decision.Fact) error, done func(decision.Fact)) error {
		for _, f := range fs {
			switch err := write(f); {
			case lost(err):
				contended = true
			case err != nil:
				return err
			default:
				done(f)
			}
		}
		return nil
	}
	err = each(plan.Cancel, func(f decision.Fact) error { return c.cancel(ctx, k.Namespace, f, now) }, func(f decision.Fact) {
		cancellations.WithLabelValues(c.Policy.Policy, fmt.Sprint(f.Held)).Inc()
	})
	if err == nil {
		err = each(plan.Release, func(f decision.Fact) error { return c.patch(ctx, k.Namespace, f.Name, c.Policy.ReleasePatch()) }, func(f decision.Fact) {
			releases.WithLabelValues(c.Policy.Policy).Inc()
			waits.WithLabelValues(c.Policy.Policy).Observe(c.now().Sub(f.Queued).Seconds())
		})
	}
	if err != nil {
		return reconcile.Result{}, stopping(ctx, err)
	}
	switch {
	case contended:
		return reconcile.Result{RequeueAfter: contendedRetry}, nil
	case !plan.Recheck.IsZero():
		return reconcile.Result{RequeueAfter: plan.Recheck.Sub(now) + settleSlack}, nil
	}
	return reconcile.Result{}, nil
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
	return c.Client.Patch(ctx, c.object(namespace, name), client.RawPatch(types.JSONPatchType, b))
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
