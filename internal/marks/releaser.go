package marks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/internal/rules"
)

// Finalizer is what rrguard's mutating webhook puts on every RR it admits, in the same patch that
// names it (no extra request): the RR cannot leave the API server before its number is covered
// by the mark. It stays only for the hold (DefaultMinAge): then the mark covers the RR's number and
// the finalizer has nothing left to protect, so rrguard removes it, long before Kubernaut's
// retention deletes the RR. A finalizer present at deletion doubles the orchestrator's
// retention_cleanup audit event (the deletionTimestamp update triggers a second reconcile that
// deletes and audits again), and makes the deletion wait for rrguard.
const Finalizer = "rrguard.kubernaut.ai/high-water-mark"

// DefaultMinAge is the hold: how long a new RR keeps its finalizer, even when it is deleted at
// once. A create decided before this RR was stored may still be in flight, carrying this RR's
// name (rrguard's index had not seen it); that create must meet this RR in etcd and be refused,
// not find the name free. The API server cuts every request after --request-timeout (60 s by
// default); the index-backed decision needs the hold to exceed two of those plus the index's
// maximum lag (10 s), see docs/design.md ("Reads"): three minutes.
const DefaultMinAge = 3 * time.Minute

// Defaults of the sweep that releases RRs once they are older than the hold.
const (
	DefaultReleaseEvery = 10 * time.Second
	DefaultReleaseBatch = 100
	// releaseWorkers bound the requests a sweep round has in flight; a full round is followed by
	// the next after at most maxRoundPause, so that an upgrade that finds thousands of RRs held
	// for life releases them at about Batch per second instead of all at once.
	releaseWorkers = 4
	maxRoundPause  = time.Second
)

var (
	raises = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_mark_writes_total",
		Help: "Writes of high-water mark ConfigMaps (raises, seeding included).",
	})
	released = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_finalizers_released_total",
		Help: "RRs whose rrguard finalizer was released after their mark was raised (at the end of the hold, or at a deletion during it).",
	})
	held = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_deletions_held",
		Help: "Objects being deleted that still carry rrguard's finalizer, as of the last seeding pass: objects deleted during their hold, or any while no replica releases; by policy.",
	}, []string{"policy"})
	collected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_mark_collections_total",
		Help: "Writes that removed marks past the horizon whose fingerprint has no RR left.",
	})
	heldOldest = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_deletion_held_oldest_seconds",
		Help: "How long the oldest deletion held by rrguard's finalizer has waited, as of the last seeding pass, by policy.",
	}, []string{"policy"})
	backlog = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rrguard_release_backlog",
		Help: "Objects older than the hold that still carry rrguard's finalizer, as of the last release round (after an upgrade: those the old release held for life, going down batch by batch), by policy.",
	}, []string{"policy"})
)

func init() { metrics.Registry.MustRegister(raises, released, held, heldOldest, collected, backlog) }

// ForgetPolicy drops policy's series of the per-policy gauges: it is no longer enforced here, and
// its last values would go on alerting. Not at the end of each generation's run: a changed policy's
// new generation reports under the same name while the old one stops.
func ForgetPolicy(policy string) {
	held.DeleteLabelValues(policy)
	heldOldest.DeleteLabelValues(policy)
	backlog.DeleteLabelValues(policy)
}

// Facts is what the releaser and the seeder read of rrguard's RR index (package rrfacts).
type Facts interface {
	Synced() bool
	Each(func(rrfacts.RR))
	// NoteCovered records a mark seen at or above upTo (the seeding pass then skips those RRs).
	NoteCovered(namespace, fp string, upTo int64)
	// KeyOf is the key (hex) and number of the object of that name, as the index judged it.
	KeyOf(namespace, name string) (keyHex string, n int64, ok bool)
	// PolicyName is the policy whose objects the index holds (the metrics' policy label).
	PolicyName() string
	// MayBeMarked is false only for a key that surely has no mark (as far as the index has
	// learnt: it may be wrong the other way, which RaiseAbsent's tests catch).
	MayBeMarked(namespace, fp string) bool
	// NoteMarked records marks that exist, by EntryKey: a key's next raise then reads first.
	NoteMarked(keys ...string)
}

// Releaser removes rrguard's finalizer from RRs once their number is covered: it raises the
// fingerprint's mark to the RR's number, then removes the finalizer, when the RR is older than the
// hold (a sweep over the index, in bounded rounds) or, for an RR deleted during its hold, when the
// hold ends (a controller the index tells of each deletion). The order is the guarantee: at every
// instant, every number issued for a fingerprint is either held by an RR that exists or covered by
// the mark. Every replica runs both (raising a mark is idempotent and monotonic, and a finalizer is
// removed once, by a patch that tests it is there or one guarded by resourceVersion): no leader
// election, no leader change to reason about; two replicas releasing one RR cost the loser a
// failed test or a conflict, not a second write.
type Releaser struct {
	// Client writes; Reader reads the RR afresh (uncached: rrguard keeps no copy of RRs, only
	// their facts in package rrfacts).
	Client client.Client
	Reader client.Reader
	Store  Store
	// Index is walked by the sweep; it must be set before the manager starts.
	Index Facts
	// MinAge is the hold, DefaultMinAge when zero.
	MinAge time.Duration
	// Every is how often the sweep looks for RRs past the hold (DefaultReleaseEvery when zero);
	// Batch bounds the RRs one round releases (DefaultReleaseBatch when zero).
	Every time.Duration
	Batch int
	// Kind is the target's: objects are read and patched as metadata only (their key comes from
	// the index), so one releaser serves any policy. Name tells its controller from other
	// policies'.
	Kind schema.GroupVersionKind
	Name string

	once    sync.Once
	queue   workqueue.TypedRateLimitingInterface[reconcile.Request]
	ctrl    controller.TypedController[reconcile.Request]
	ctrlErr error
}

// deletionWorkers release objects deleted during their hold concurrently: each release is two
// writes (the mark, the finalizer) waiting on the API server, so the workers wait in parallel; 16
// keeps within the client's default burst of reads and writes beside the webhooks' reads.
const deletionWorkers = 16

// unindexedRetry is how soon an object deleted during its hold is looked at again when the index
// has not seen it yet: the index lags a read by a watch event, milliseconds as a rule, so a second
// is ample and the object stays held meanwhile (safe: held longer, never released unmarked).
const unindexedRetry = time.Second

// syncPoll is how often a loop that needs the index (the sweep, the seeder) looks again while it
// has not synced: short, because replicas answer 503 until the seeder has run once.
const syncPoll = 100 * time.Millisecond

// object is an empty metadata-only object of the target's kind.
func (r *Releaser) object(namespace, name string) *metav1.PartialObjectMetadata {
	o := &metav1.PartialObjectMetadata{}
	o.SetGroupVersionKind(r.Kind)
	o.Namespace, o.Name = namespace, name
	return o
}

// SetupWithManager runs the releaser (Start) with the manager.
func (r *Releaser) SetupWithManager(mgr ctrl.Manager) error { return mgr.Add(r) }

// Start runs the sweep and the controller of deletions until ctx is done (manager.Runnable, or run
// alone: a policy's releaser starts and stops with the policy).
func (r *Releaser) Start(ctx context.Context) error {
	c, err := r.init()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- c.Start(ctx) }()
	sweepErr := r.sweep(ctx)
	cancel()
	return errors.Join(sweepErr, <-stopped)
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica releases.
func (r *Releaser) NeedLeaderElection() bool { return false }

// init builds the queue the index feeds (Enqueue may come before Start: the index and the
// releaser start together) and the controller that drains it: controller-runtime's workers,
// rate-limited retries, panic recovery and per-controller metrics, with the index's deletion
// notices as its source instead of an informer (rrguard keeps no cache of the target).
func (r *Releaser) init() (controller.TypedController[reconcile.Request], error) {
	r.once.Do(func() {
		r.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request](),
			workqueue.TypedRateLimitingQueueConfig[reconcile.Request]{Name: deletionController + r.Name})
		// A policy's next generation (a changed target) starts while the last stops, under one
		// name; replicas in one process (tests) share the registry of names too.
		skip := true
		r.ctrl, r.ctrlErr = controller.NewTypedUnmanaged(deletionController+r.Name, controller.TypedOptions[reconcile.Request]{
			Reconciler:              reconcile.Func(r.Reconcile),
			MaxConcurrentReconciles: deletionWorkers,
			SkipNameValidation:      &skip,
			Logger:                  ctrl.Log.WithName("marks"),
			NewQueue: func(string, workqueue.TypedRateLimiter[reconcile.Request]) workqueue.TypedRateLimitingInterface[reconcile.Request] {
				return r.queue
			},
		})
	})
	return r.ctrl, r.ctrlErr
}

// deletionController prefixes the name of a policy's controller of deletions (its metrics' and
// logs' controller label) and of its queue.
const deletionController = "high-water-mark-"

// Enqueue asks the releaser to look at an object being deleted that carries Finalizer.
func (r *Releaser) Enqueue(namespace, name string) {
	if _, err := r.init(); err != nil {
		return // Start fails with the same error: the policy is not enforced here
	}
	r.queue.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}})
}

func (r *Releaser) minAge() time.Duration {
	if r.MinAge == 0 {
		return DefaultMinAge
	}
	return r.MinAge
}

// Reconcile implements reconcile.Reconciler, for RRs deleted during their hold: they wait until
// it ends. A write lost to another replica's (a conflict) is retried after a fresh read without
// an error: with several replicas it is the rule, not a fault.
func (r *Releaser) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	res, err := r.releaseDeleted(ctx, req)
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopping (a policy's next generation takes over): the object stays held for it.
		return reconcile.Result{}, nil
	case err != nil && contended(err):
		return reconcile.Result{RequeueAfter: contendedRetry}, nil
	}
	return res, err
}

// contendedRetry: how soon a release that lost a write to another replica reads again; the winner
// has usually finished by then, and the fresh read finds the finalizer gone.
const contendedRetry = 100 * time.Millisecond

func (r *Releaser) releaseDeleted(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	o := r.object(req.Namespace, req.Name)
	if err := r.Reader.Get(ctx, req.NamespacedName, o); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !slices.Contains(o.Finalizers, Finalizer) {
		return reconcile.Result{}, nil
	}
	if wait := r.minAge() - time.Since(o.CreationTimestamp.Time); wait > 0 {
		if o.DeletionTimestamp == nil {
			return reconcile.Result{}, nil // the sweep releases it when the hold ends
		}
		return reconcile.Result{RequeueAfter: wait}, nil
	}
	keyHex, n, ok := r.Index.KeyOf(o.Namespace, o.Name)
	if !ok {
		// Not in the index yet (it lags the read above): its key is unknown, so it stays held.
		return reconcile.Result{RequeueAfter: unindexedRetry}, nil
	}
	if err := r.Store.cover(ctx, o.Namespace, o.Name, keyHex, n); err != nil {
		// A conflict or a concurrent shard create: the next try reads afresh.
		return reconcile.Result{}, err
	}
	if n > 0 {
		r.Index.NoteCovered(o.Namespace, keyHex, n)
	}
	return reconcile.Result{}, dropFinalizer(ctx, r.Client, o)
}

// sweep releases, round after round, the RRs the index shows past the hold with the finalizer on
// (manager.Runnable; every replica runs it). A round takes at most Batch of them, raises their
// marks one write per shard, then removes each finalizer: per RR lifetime, at most one mark write
// (shared by the RRs of a shard in one round) and one finalizer removal, and nothing at deletion.
func (r *Releaser) sweep(ctx context.Context) error {
	every, batch := r.Every, r.Batch
	if every == 0 {
		every = DefaultReleaseEvery
	}
	if batch == 0 {
		batch = DefaultReleaseBatch
	}
	log := ctrl.Log.WithName("marks")
	for {
		wait := min(every, syncPoll)
		if r.Index.Synced() {
			wait = every
			due, total := r.due(time.Now(), batch)
			if total > batch {
				log.Info("releasing RRs past the hold in rounds", "backlog", total, "round", batch)
			}
			done := r.releaseRound(ctx, due)
			backlog.WithLabelValues(r.Name).Set(float64(total - done))
			if len(due) == batch && done > 0 {
				wait = min(every, maxRoundPause)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// due returns up to batch RRs past the hold that carry the finalizer, and how many there are.
func (r *Releaser) due(now time.Time, batch int) (due []rrfacts.RR, total int) {
	cutoff := now.Add(-r.minAge())
	r.Index.Each(func(rr rrfacts.RR) {
		if !rr.Finalized || rr.Created.After(cutoff) {
			return
		}
		total++
		if len(due) < batch {
			due = append(due, rr)
		}
	})
	return due, total
}

// releaseRound covers and releases the RRs given; it returns how many no longer carry the
// finalizer.
func (r *Releaser) releaseRound(ctx context.Context, due []rrfacts.RR) int {
	log := ctrl.Log.WithName("marks")
	type shardKey struct{ ns, shard string }
	want := map[shardKey]map[string]int64{}
	for _, rr := range due {
		if rr.N == 0 {
			continue // Kubernaut's own names never collide with the scheme's
		}
		k := shardKey{rr.Namespace, ShardName(rr.Fingerprint)}
		if want[k] == nil {
			want[k] = map[string]int64{}
		}
		want[k][rr.Fingerprint] = max(want[k][rr.Fingerprint], rr.N)
	}
	covered := map[shardKey]bool{}
	for k, fps := range want {
		raise := r.Store.RaiseAbsent
		for fp := range fps {
			if r.Index.MayBeMarked(k.ns, fp) {
				raise = r.Store.Raise
				break
			}
		}
		if err := retry.OnError(retry.DefaultBackoff, contended, func() error {
			err := raise(ctx, k.ns, k.shard, fps)
			if contended(err) {
				// Another writer has the shard: the retry reads it rather than try the test again.
				raise = r.Store.Raise
			}
			return err
		}); err != nil {
			if ctx.Err() != nil {
				return 0 // stopping
			}
			log.Error(err, "raising high-water marks before releasing RRs", "namespace", k.ns, "shard", k.shard)
			continue
		}
		covered[k] = true
		for fp, n := range fps {
			r.Index.NoteCovered(k.ns, fp, n)
			r.Index.NoteMarked(r.Store.EntryKey(k.ns, fp))
		}
	}
	work := make(chan rrfacts.RR)
	var done atomic.Int64
	var wg sync.WaitGroup
	for range releaseWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rr := range work {
				if err := r.releaseAged(ctx, rr); err != nil {
					if ctx.Err() == nil {
						log.Error(err, "releasing an RR past the hold", "namespace", rr.Namespace, "name", rr.Name)
					}
					continue
				}
				done.Add(1)
			}
		}()
	}
	for _, rr := range due {
		if rr.N != 0 && !covered[shardKey{rr.Namespace, ShardName(rr.Fingerprint)}] {
			continue
		}
		work <- rr
	}
	close(work)
	wg.Wait()
	return int(done.Load())
}

// releaseAged removes the finalizer of an object whose mark the round has raised, if it is the one
// the index showed past the hold (same creation). In one write, without a read, when the finalizer
// is the object's first (rrguard puts it on at creation; Kubernaut puts none): a JSON patch whose
// tests the API server evaluates on the stored object, atomically with the removal. Otherwise (a
// finalizer before it, or the object changed) a fresh read and a patch guarded by its
// resourceVersion. The read was a quarter of the release's requests to the API server
// (docs/benchmarks.md).
func (r *Releaser) releaseAged(ctx context.Context, f rrfacts.RR) error {
	err := r.Client.Patch(ctx, r.object(f.Namespace, f.Name), client.RawPatch(types.JSONPatchType, firstFinalizerPatch(f.Created)))
	switch {
	case err == nil:
		released.Inc()
		return nil
	case apierrors.IsNotFound(err):
		return nil
	case !apierrors.IsInvalid(err):
		return err
	}
	// A test failed: the finalizer is not first (or gone), or the object is not the one the index
	// showed.
	return retry.OnError(retry.DefaultBackoff, apierrors.IsConflict, func() error {
		o := r.object(f.Namespace, f.Name)
		if err := r.Reader.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			return client.IgnoreNotFound(err)
		}
		if !slices.Contains(o.Finalizers, Finalizer) {
			return nil
		}
		if o.CreationTimestamp.Unix() != f.Created.Unix() || time.Since(o.CreationTimestamp.Time) < r.minAge() {
			return fmt.Errorf("%s/%s is not the object the index showed past the hold", o.Namespace, o.Name)
		}
		return dropFinalizer(ctx, r.Client, o)
	})
}

// firstFinalizerPatch removes Finalizer when it is the first finalizer of an object created at
// created (the index's record of it, whole seconds as stored).
func firstFinalizerPatch(created time.Time) []byte {
	ts, _ := json.Marshal(created.UTC().Format(time.RFC3339))
	fin, _ := json.Marshal(Finalizer)
	return []byte(`[{"op":"test","path":"/metadata/creationTimestamp","value":` + string(ts) + `},` +
		`{"op":"test","path":"/metadata/finalizers/0","value":` + string(fin) + `},` +
		`{"op":"remove","path":"/metadata/finalizers/0"}]`)
}

// cover raises the mark of key keyHex to n, the number of the object name (rrguard's names only:
// a name outside the scheme, n 0, never collides with it).
func (s Store) cover(ctx context.Context, namespace, name, keyHex string, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := s.Raise(ctx, namespace, ShardName(keyHex), map[string]int64{keyHex: n}); err != nil {
		return fmt.Errorf("raising the mark of %s/%s to %d: %w", namespace, name, n, err)
	}
	return nil
}

// dropFinalizer removes Finalizer from o with a patch guarded by o's resourceVersion; an object
// already gone needs nothing.
func dropFinalizer(ctx context.Context, c client.Client, o client.Object) error {
	patch := client.MergeFromWithOptions(o.DeepCopyObject().(client.Object), client.MergeFromWithOptimisticLock{})
	o.SetFinalizers(slices.DeleteFunc(o.GetFinalizers(), func(f string) bool { return f == Finalizer }))
	if err := c.Patch(ctx, o, patch); err != nil {
		return client.IgnoreNotFound(err)
	}
	released.Inc()
	return nil
}

// contended is a write that lost to another writer of the same object: worth a fresh read.
func contended(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }

// ReleaseAll removes Finalizer from every object of kind (a policy's target, read as metadata only)
// in the namespaces (none: the whole cluster) that still carries it (those in their hold, or not
// yet released after an upgrade), raising each one's mark first: its key and number are read from
// its name (prefix, the policy's namePrefix; rules.ParseName), so a reinstall that keeps the marks
// does not reissue them. store is scoped to the target (ScopeOf). It is the uninstall step
// (`rrguard release`, run by `make undeploy` before the webhooks go and by the Helm chart's
// post-delete hook after), once per policy: nothing stays held by a controller that no longer
// runs. It returns how many objects it released. A list per namespace needs only the Roles
// rrguard has there, not a cluster-wide read.
func ReleaseAll(ctx context.Context, c client.Client, store Store, kind schema.GroupVersionKind, prefix string, namespaces ...string) (int, error) {
	var items []metav1.PartialObjectMetadata
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(kind.GroupVersion().WithKind(kind.Kind + "List"))
		if err := c.List(ctx, list, client.InNamespace(ns)); err != nil {
			return 0, err
		}
		items = append(items, list.Items...)
	}
	released := 0
	for i := range items {
		o := &items[i]
		if !slices.Contains(o.Finalizers, Finalizer) {
			continue
		}
		if err := retry.OnError(retry.DefaultBackoff, contended, func() error {
			// A name outside the scheme has no number to cover; with rrguard's namespace already
			// gone, the marks are gone too: release anyway.
			if key, n, ok := rules.ParseName(prefix, o.Name); ok {
				if err := store.cover(ctx, o.Namespace, o.Name, key, n); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
			}
			cur := &metav1.PartialObjectMetadata{}
			cur.SetGroupVersionKind(kind)
			if err := c.Get(ctx, client.ObjectKeyFromObject(o), cur); err != nil {
				return client.IgnoreNotFound(err)
			}
			return dropFinalizer(ctx, c, cur)
		}); err != nil {
			return released, fmt.Errorf("releasing %s %s/%s: %w", kind.Kind, o.Namespace, o.Name, err)
		}
		released++
	}
	return released, nil
}
