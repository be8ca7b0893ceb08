package marks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rrfacts"
	"github.com/rrguard/rrguard/rules"
)

// Finalizer is what rrguard's mutating webhook puts on every RR it admits, in the same patch that
// names it (no extra request): the RR cannot leave the API server before its number is covered
// by the mark.
const Finalizer = "rrguard.kubernaut.ai/high-water-mark"

// DefaultMinAge is how long a new RR is held before its finalizer is released, even when it is
// deleted at once. A create decided before this RR was stored may still be in flight, carrying
// this RR's name (rrguard's index had not seen it); that create must meet this RR in etcd and be
// refused, not find the name free. The API server cuts every request after --request-timeout
// (60 s by default); the index-backed decision needs the hold to exceed two of those plus the
// index's maximum lag (10 s), see docs/design.md ("Reads"): three minutes. Kubernaut deletes RRs
// 24 h after they complete, so in practice nothing waits.
const DefaultMinAge = 3 * time.Minute

var (
	raises = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_mark_writes_total",
		Help: "Writes of high-water mark ConfigMaps (raises, seeding included).",
	})
	released = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_finalizers_released_total",
		Help: "RRs whose rrguard finalizer was released after their mark was raised.",
	})
	held = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rrguard_deletions_held",
		Help: "RRs being deleted that still carry rrguard's finalizer, as of the last seeding pass.",
	})
	collected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rrguard_mark_collections_total",
		Help: "Writes that removed marks past the horizon whose fingerprint has no RR left.",
	})
	heldOldest = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rrguard_deletion_held_oldest_seconds",
		Help: "How long the oldest deletion held by rrguard's finalizer has waited, as of the last seeding pass.",
	})
)

func init() { metrics.Registry.MustRegister(raises, released, held, heldOldest, collected) }

// Releaser is the controller that lets deleted RRs go: for an RR being deleted that carries
// Finalizer, it raises the fingerprint's mark to the RR's number, then removes the finalizer.
// The order is the guarantee: at every instant, every number issued for a fingerprint is either
// held by an RR that exists or covered by the mark. Every replica runs it (raising a mark is
// idempotent and monotonic, and a finalizer is removed once): no leader election, no leader
// change to reason about.
type Releaser struct {
	// Client writes; Reader reads the RR afresh (uncached: rrguard keeps no copy of RRs, only
	// their facts in package rrfacts, which tells the releaser of each deletion by Enqueue).
	Client client.Client
	Reader client.Reader
	Store  Store
	// MinAge is DefaultMinAge when zero.
	MinAge time.Duration
	events chan event.GenericEvent
}

// SetupWithManager registers the controller; Enqueue feeds it.
func (r *Releaser) SetupWithManager(mgr ctrl.Manager) error {
	r.events = make(chan event.GenericEvent, 1024)
	return ctrl.NewControllerManagedBy(mgr).
		Named("high-water-mark").
		WatchesRawSource(source.Channel(r.events, &handler.EnqueueRequestForObject{})).
		// Several replicas run in one process in tests; names are for logs and metrics only.
		WithOptions(controller.Options{MaxConcurrentReconciles: 16, SkipNameValidation: ptr(true)}).
		Complete(r)
}

// Enqueue asks the releaser to look at an RR being deleted that carries Finalizer.
func (r *Releaser) Enqueue(namespace, name string) {
	o := &metav1.PartialObjectMetadata{}
	o.Namespace, o.Name = namespace, name
	r.events <- event.GenericEvent{Object: o}
}

// Reconcile implements reconcile.Reconciler.
func (r *Releaser) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var rr v1alpha1.RemediationRequest
	if err := r.Reader.Get(ctx, req.NamespacedName, &rr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if rr.DeletionTimestamp == nil || !slices.Contains(rr.Finalizers, Finalizer) {
		return reconcile.Result{}, nil
	}
	minAge := r.MinAge
	if minAge == 0 {
		minAge = DefaultMinAge
	}
	if wait := minAge - time.Since(rr.CreationTimestamp.Time); wait > 0 {
		return reconcile.Result{RequeueAfter: wait}, nil
	}
	if err := r.Store.cover(ctx, &rr); err != nil {
		// A conflict or a concurrent shard create: the next try reads afresh.
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, dropFinalizer(ctx, r.Client, &rr)
}

// cover raises the mark of rr's fingerprint to rr's number (rrguard's names only: Kubernaut's own
// never collide with the scheme's).
func (s Store) cover(ctx context.Context, rr *v1alpha1.RemediationRequest) error {
	fp := rr.Spec.SignalFingerprint
	n, ok := rules.Occurrence(fp, rr.Name)
	if !ok {
		return nil
	}
	if err := s.Raise(ctx, rr.Namespace, ShardName(fp), map[string]int64{fp: n}); err != nil {
		return fmt.Errorf("raising the mark of %s/%s to %d: %w", rr.Namespace, rr.Name, n, err)
	}
	return nil
}

// dropFinalizer removes Finalizer from rr with a patch guarded by rr's resourceVersion; an RR
// already gone needs nothing.
func dropFinalizer(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest) error {
	patch := client.MergeFromWithOptions(rr.DeepCopy(), client.MergeFromWithOptimisticLock{})
	rr.Finalizers = slices.DeleteFunc(rr.Finalizers, func(f string) bool { return f == Finalizer })
	if err := c.Patch(ctx, rr, patch); err != nil {
		return client.IgnoreNotFound(err)
	}
	released.Inc()
	return nil
}

// contended is a write that lost to another writer of the same object: worth a fresh read.
func contended(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }

// Seeder raises the marks of the RRs that carry no finalizer (created before rrguard had one, or
// by an older replica during an upgrade) to their numbers, so that deleting them cannot free their
// names. A replica answers admission only once its first pass is done (Ready).
type Seeder struct {
	// Index is rrguard's watch of RRs: the pass reads it, not the API server.
	Index interface {
		Synced() bool
		Each(func(rrfacts.RR))
		NoteMarked(keys ...string)
		LoadedMarks()
	}
	Store  Store
	seeded atomic.Bool
	// Every is how often a pass repeats after the first (to cover RRs an older replica admits
	// during a rolling upgrade); 30 s when zero.
	Every time.Duration
	// Horizon: a mark raised longer ago than this, whose fingerprint has no RR left, is removed
	// (DefaultHorizon when zero). Every GCEvery (1 h when zero) a pass looks for such marks.
	Horizon, GCEvery time.Duration
	lastGC           time.Time
}

// DefaultHorizon is how long Kubernaut's DataStorage keeps audit events (2,555 days): after it, the
// name's old correlation data is gone, unless a legal hold keeps it longer.
const DefaultHorizon = 2555 * 24 * time.Hour

// Ready fails until the first pass has completed: a replica decides only once its marks are
// seeded.
func (s *Seeder) Ready() error {
	if !s.seeded.Load() {
		return errors.New("high-water marks not seeded yet")
	}
	return nil
}

// Start implements manager.Runnable: a pass at once (after the cache syncs), then periodically.
func (s *Seeder) Start(ctx context.Context) error {
	every := s.Every
	if every == 0 {
		every = 30 * time.Second
	}
	for {
		if err := s.pass(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, errIndexNotSynced) {
				ctrl.Log.WithName("marks").Error(err, "seeding high-water marks")
			}
		} else {
			s.seeded.Store(true)
		}
		wait := every
		if !s.seeded.Load() {
			wait = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica seeds.
func (s *Seeder) NeedLeaderElection() bool { return false }

var errIndexNotSynced = errors.New("the RR index has not synced yet")

// loadMarks tells the index every mark that exists.
func (s *Seeder) loadMarks(ctx context.Context) error {
	shards, err := s.Store.shards(ctx)
	if err != nil {
		return err
	}
	for i := range shards.Items {
		keys := make([]string, 0, len(shards.Items[i].Data))
		for k := range shards.Items[i].Data {
			keys = append(keys, k)
		}
		s.Index.NoteMarked(keys...)
	}
	s.Index.LoadedMarks()
	return nil
}

func (s *Seeder) pass(ctx context.Context) error {
	if !s.Index.Synced() {
		return errIndexNotSynced
	}
	// namespace -> shard -> fingerprint -> highest number
	want := map[string]map[string]map[string]int64{}
	live := map[string]bool{}
	var heldNow int
	var oldest time.Duration
	s.Index.Each(func(rr rrfacts.RR) {
		live[EntryKey(rr.Namespace, rr.Fingerprint)] = true
		if rr.Finalized {
			if !rr.DeletedAt.IsZero() {
				heldNow++
				oldest = max(oldest, time.Since(rr.DeletedAt))
			}
			return
		}
		if rr.N == 0 {
			return // Kubernaut's own names never collide with the scheme's
		}
		shard := ShardName(rr.Fingerprint)
		if want[rr.Namespace] == nil {
			want[rr.Namespace] = map[string]map[string]int64{}
		}
		if want[rr.Namespace][shard] == nil {
			want[rr.Namespace][shard] = map[string]int64{}
		}
		want[rr.Namespace][shard][rr.Fingerprint] = max(want[rr.Namespace][shard][rr.Fingerprint], rr.N)
	})
	if !s.seeded.Load() {
		// The index learns which fingerprints have marks once, after its watch began; from
		// then on it sees every deletion itself.
		if err := s.loadMarks(ctx); err != nil {
			return err
		}
	}
	held.Set(float64(heldNow))
	heldOldest.Set(oldest.Seconds())
	gcEvery := s.GCEvery
	if gcEvery == 0 {
		gcEvery = time.Hour
	}
	if time.Since(s.lastGC) >= gcEvery {
		if err := s.collect(ctx, live); err != nil {
			return err
		}
		s.lastGC = time.Now()
	}
	for ns, shards := range want {
		for shard, fps := range shards {
			if err := retry.OnError(retry.DefaultBackoff, contended, func() error { return s.Store.Raise(ctx, ns, shard, fps) }); err != nil {
				return err
			}
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// ReleaseAll removes Finalizer from every RR in the namespaces (none: the whole cluster), raising
// each RR's mark first. It is the uninstall step (`rrguard release`, run by `make undeploy` before
// the webhooks go and by the Helm chart's post-delete hook after): no RR stays held by a
// controller that no longer runs. It returns how many RRs it released. A list per namespace needs
// only the Roles rrguard has there, not a cluster-wide read.
func ReleaseAll(ctx context.Context, c client.Client, store Store, namespaces ...string) (int, error) {
	var items []v1alpha1.RemediationRequest
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		var list v1alpha1.RemediationRequestList
		if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return 0, err
		}
		items = append(items, list.Items...)
	}
	released := 0
	for i := range items {
		rr := &items[i]
		if !slices.Contains(rr.Finalizers, Finalizer) {
			continue
		}
		if err := retry.OnError(retry.DefaultBackoff, contended, func() error {
			// With rrguard's namespace already gone, the marks are gone too: release anyway.
			if err := store.cover(ctx, rr); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			var cur v1alpha1.RemediationRequest
			if err := c.Get(ctx, client.ObjectKeyFromObject(rr), &cur); err != nil {
				return client.IgnoreNotFound(err)
			}
			return dropFinalizer(ctx, c, &cur)
		}); err != nil {
			return released, fmt.Errorf("releasing %s/%s: %w", rr.Namespace, rr.Name, err)
		}
		released++
	}
	return released, nil
}

// collect removes the marks older than the horizon whose fingerprint has no RR left in the index
// (live: entry keys of the fingerprints that have). An index that lags can only keep a mark
// longer (it may still show a deleted RR), and an RR it missed carries a number of its own, above
// the mark, that numbering follows anyway.
func (s *Seeder) collect(ctx context.Context, live map[string]bool) error {
	horizon := s.Horizon
	if horizon == 0 {
		horizon = DefaultHorizon
	}
	shards, err := s.Store.shards(ctx)
	if err != nil {
		return err
	}
	for i := range shards.Items {
		cm := &shards.Items[i]
		changed := false
		for k, v := range cm.Data {
			e, err := parseEntry(v)
			if err != nil || live[k] || time.Since(e.Raised) < horizon {
				continue
			}
			delete(cm.Data, k)
			changed = true
		}
		if !changed {
			continue
		}
		// Guarded by the resourceVersion read: a raise in between wins, and the next pass retries.
		if err := s.Store.Writer.Update(ctx, cm); err != nil && !apierrors.IsConflict(err) {
			return err
		}
		collected.Inc()
	}
	return nil
}
