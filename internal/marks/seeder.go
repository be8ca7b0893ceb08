package marks

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rrfacts"
)

// Seeder raises the marks of the RRs that carry no finalizer and that this process has not seen
// covered (created before rrguard had one, or by an older replica during an upgrade, or released
// by another replica) to their numbers, so that deleting them cannot free their names. A replica
// answers admission only once its first pass is done (Ready). An RR rrguard released is covered
// already (the mark was raised before the finalizer went): the pass only reads its shard once, to
// learn so, and never writes for it.
type Seeder struct {
	// Index is rrguard's watch of RRs: the pass reads it, not the API server.
	Index interface {
		Facts
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

// Defaults of the seeder: seedEvery repeats the seeding of marks from objects without the finalizer
// (the ones an older release or an outage left unmarked), which is idempotent and reads only the
// index and the marks; gcEvery looks for marks past the horizon, which change over days.
const (
	defaultSeedEvery = 30 * time.Second
	defaultGCEvery   = time.Hour
)

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
		every = defaultSeedEvery
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
			wait = syncPoll
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

// loadMarks tells the index every mark that exists, and returns them by EntryKey.
func (s *Seeder) loadMarks(ctx context.Context) (map[string]int64, error) {
	shards, err := s.Store.shards(ctx)
	if err != nil {
		return nil, err
	}
	all := map[string]int64{}
	for i := range shards.Items {
		keys := make([]string, 0, len(shards.Items[i].Data))
		for k, v := range shards.Items[i].Data {
			keys = append(keys, k)
			if e, err := parseEntry(v); err == nil {
				all[k] = e.N
			}
		}
		s.Index.NoteMarked(keys...)
	}
	s.Index.LoadedMarks()
	return all, nil
}

type seedKey struct{ ns, fp string }

func (s *Seeder) pass(ctx context.Context) error {
	if !s.Index.Synced() {
		return errIndexNotSynced
	}
	var loaded map[string]int64
	if !s.seeded.Load() {
		// The index learns which fingerprints have marks once, after its watch began; from
		// then on it sees every deletion itself. The values spare the first pass a read per
		// shard for RRs that are covered already.
		var err error
		if loaded, err = s.loadMarks(ctx); err != nil {
			return err
		}
	}
	// namespace -> shard -> fingerprint -> highest number
	want := map[string]map[string]map[string]int64{}
	live := map[string]bool{}
	coveredNow := map[seedKey]int64{}
	var heldNow int
	var oldest time.Duration
	s.Index.Each(func(rr rrfacts.RR) {
		key := s.Store.EntryKey(rr.Namespace, rr.Fingerprint)
		live[key] = true
		if rr.Finalized {
			if !rr.DeletedAt.IsZero() {
				heldNow++
				oldest = max(oldest, time.Since(rr.DeletedAt))
			}
			return
		}
		if rr.N == 0 || rr.Covered {
			return // Kubernaut's own names never collide with the scheme's
		}
		if m, ok := loaded[key]; ok && m >= rr.N {
			coveredNow[seedKey{rr.Namespace, rr.Fingerprint}] = m
			return
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
	for k, m := range coveredNow {
		s.Index.NoteCovered(k.ns, k.fp, m)
	}
	held.WithLabelValues(s.Index.PolicyName()).Set(float64(heldNow))
	heldOldest.WithLabelValues(s.Index.PolicyName()).Set(oldest.Seconds())
	gcEvery := s.GCEvery
	if gcEvery == 0 {
		gcEvery = defaultGCEvery
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
			for fp, n := range fps {
				s.Index.NoteCovered(ns, fp, n)
			}
		}
	}
	return nil
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
			if err != nil || !s.Store.owns(k) || live[k] || time.Since(e.Raised) < horizon {
				continue
			}
			delete(cm.Data, k)
			changed = true
		}
		if !changed {
			continue
		}
		// Guarded by the resourceVersion read: a raise in between wins, and the next pass retries.
		// A shard left empty is deleted, not kept without data: a raise that adds an entry
		// without reading (RaiseAbsent) patches a path under data, which an empty shard lacks.
		var err error
		if len(cm.Data) == 0 {
			err = s.Store.Writer.Delete(ctx, cm, client.Preconditions{ResourceVersion: &cm.ResourceVersion})
			if err == nil || apierrors.IsNotFound(err) {
				s.Store.Known.forget(cm.Name)
				err = nil
			}
		} else {
			err = s.Store.Writer.Update(ctx, cm)
		}
		if err != nil && !apierrors.IsConflict(err) {
			return err
		}
		collected.Inc()
	}
	return nil
}
