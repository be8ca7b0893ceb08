// Package rrfacts keeps what rrguard knows of the RemediationRequests it judges: for each RR,
// the facts a naming decision reads (its occurrence number, the in-flight rule's inputs, whether
// it carries rrguard's finalizer) and nothing else, indexed by fingerprint. It is rrguard's only
// watch of RRs: the decision, the controller that releases deleted RRs and the seeding pass all
// read it.
//
// The index only lags, never invents: every fact came from the API server's watch, applied in
// the order the API server sent it. How far it may lag is bounded (see Lookup): a decision uses
// it only while that bound holds.
package rrfacts

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/policy"
)

// Fact is what the index knows of one RR: what a decision reads of it, and what the releaser
// needs.
type Fact struct {
	decision.Fact
	// Finalized: the RR carries the finalizer the index was told to look for (rrguard's).
	Finalized bool
	// Covered: this process has seen the fingerprint's high-water mark at or above N (see
	// NoteCovered). An RR without the finalizer and not Covered may have a number no mark
	// covers yet.
	Covered bool
	// DeletedAt is when deletion was asked for; zero while the RR is not being deleted.
	DeletedAt time.Time
}

// RR is a Fact with where it lives, for a pass over the whole index.
type RR struct {
	Namespace, Fingerprint string
	Fact
}

// Untrusted is the answer of Lookup when the index cannot be used for a decision.
type Untrusted struct{ Reason string }

func (u *Untrusted) Error() string { return "the RR index cannot decide: " + u.Reason }

// Reasons Lookup gives.
const (
	ReasonNotWatched = "namespace-not-watched"
	ReasonNotSynced  = "index-not-synced"
	ReasonNotFresh   = "index-not-fresh"
)

// Options configure an Index.
type Options struct {
	// Namespaces to watch; empty watches all.
	Namespaces []string
	// Finalizer is recorded as Fact.Finalized.
	Finalizer string
	// MaxLag is how old the index's last proof of completeness may be for Lookup to answer
	// (see Lookup); zero makes every Lookup untrusted.
	MaxLag time.Duration
	// MarkKey is how the high-water marks key a fingerprint (marks.EntryKey): NoteMarked is given
	// such keys.
	MarkKey func(namespace, fp string) string
	// OnDeleting is called, outside the index's lock, for each RR seen being deleted while it
	// carries Finalizer.
	OnDeleting func(namespace, name string)
	// Policy says which objects the index keeps facts of, under which key, and when each is in
	// flight; Kind is its target's kind (the resource is the policy's).
	Policy *policy.Compiled
	Kind   schema.GroupVersionKind
	// OnQueue, when set, is called (outside the index's lock) after each change to the objects
	// of a key that has held objects (a Queue or Replace policy's), with the key as the
	// expression gives it: the key's queue may move.
	OnQueue func(namespace, keyHex, key string)
	// FieldSelectable: the API server serves a field selector on the policy's KeyField (a CRD
	// declares it selectable); otherwise ReadKey scans the namespace.
	FieldSelectable bool
}

var evalErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "rrguard_policy_eval_errors_total",
	Help: "Objects whose in-flight rule or phase failed to evaluate when the index took their facts (each counted in flight), by policy.",
}, []string{"policy"})

func init() { metrics.Registry.MustRegister(evalErrors) }

// Index is the fact store. Start runs its watches.
type Index struct {
	o     Options
	rc    rest.Interface
	rd    *reading
	feeds []*feed

	mu  sync.RWMutex
	nss map[string]*nsFacts
	// marked and marksLoaded: see MayBeMarked.
	marked      *marked
	marksLoaded bool
	phases      map[string]string
	// keys is the key, as the expression gives it, of each group with held objects, by
	// "<namespace>/<keyHex>" (OnQueue's third argument); only with OnQueue.
	keys map[string]string
	// moved is when this process last saw a held object of a key leave the queue (released,
	// cancelled, deleted), by "<namespace>/<keyHex>"; started is when the index was made. Only
	// for QueueCensus: nothing decides by them.
	moved   map[string]time.Time
	started time.Time
	// queued is decision.Fact.Queued (unix nanoseconds) of the entries a Queue or Replace policy
	// admitted: kept beside the entries, so that objects of other policies pay nothing for it.
	queued map[*entry]int64
}

// Census is what a policy's queues hold, for its metrics.
type Census struct {
	// Held is the objects rrguard holds to release later; Oldest, when Held > 0, is the creation
	// of the one that has waited longest.
	Held   int
	Oldest time.Time
	// Stalled is the keys that hold objects and have released none for longer than the policy's
	// stall bound (counted from the later of the last release this process saw, its start and
	// the oldest held object's creation).
	Stalled int
}

// QueueCensus counts the objects held in every key's queue, as of now.
func (ix *Index) QueueCensus(now time.Time, stallAfter time.Duration) Census {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	var c Census
	for ns, nsf := range ix.nss {
		for _, g := range nsf.byFP {
			var oldest time.Time
			for _, e := range g.entries {
				if e.waiting() {
					c.Held++
					if t := time.Unix(e.created, 0); oldest.IsZero() || t.Before(oldest) {
						oldest = t
					}
				}
			}
			if oldest.IsZero() {
				continue
			}
			if c.Oldest.IsZero() || oldest.Before(c.Oldest) {
				c.Oldest = oldest
			}
			since := oldest
			for _, t := range []time.Time{ix.moved[ns+"/"+g.fp], ix.started} {
				if t.After(since) {
					since = t
				}
			}
			if now.Sub(since) > stallAfter {
				c.Stalled++
			}
		}
	}
	return c
}

type nsFacts struct {
	byName map[string]*entry
	byFP   map[string]*group
}

// group holds one fingerprint's entries; the fingerprint string is stored once, here.
type group struct {
	fp      string // the key, hex
	ix      *Index
	entries []*entry
}

// entry is a Fact as stored: a scheme name is not kept (it is rules.Name(fp, n)), which saves its
// bytes for nearly every RR.
type entry struct {
	name      string // only for names outside the scheme
	n         int64
	until     int64  // unix seconds of decision.Fact.Until; 0 for the zero time
	phase     string // interned (Index.intern)
	finalized bool
	covered   bool
	held      bool  // decision.Fact.Held
	lifted    bool  // decision.Fact.Lifted
	cancelled bool  // decision.Fact.Cancelled
	created   int64 // unix seconds
	deletedAt int64 // unix seconds; 0 when not being deleted
	g         *group
}

// waiting: rrguard holds the object to release it later (decision.Fact.Waiting).
func (e *entry) waiting() bool { return e.held && !e.cancelled && e.deletedAt == 0 }

// queueWork: the queue's controller may have a write to make for the object: release it, or
// drop the annotation of a hold someone else lifted (decision.Fact.Lifted).
func (e *entry) queueWork() bool { return e.waiting() || (e.lifted && e.deletedAt == 0) }

func (e *entry) fact() Fact {
	f := Fact{Fact: decision.Fact{Name: e.name, N: e.n, Phase: e.phase, Created: time.Unix(e.created, 0),
		Held: e.held, Lifted: e.lifted, Cancelled: e.cancelled, Deleting: e.deletedAt != 0},
		Finalized: e.finalized, Covered: e.covered}
	if e.until != 0 {
		f.Until = time.Unix(e.until, 0)
	}
	if f.Name == "" {
		f.Name = e.g.ix.o.Policy.Name(e.g.fp, e.n)
	}
	if q, ok := e.g.ix.queued[e]; ok {
		f.Queued = time.Unix(0, q)
	}
	if e.deletedAt != 0 {
		f.DeletedAt = time.Unix(e.deletedAt, 0)
	}
	return f
}

// feed is one watch (one namespace, or all), with its own proof of completeness.
type feed struct {
	ix        *Index
	namespace string // "" for all

	mu sync.Mutex
	// callStart is when the newest List or Watch call began; a list it returns is complete for
	// every RR stored before that instant.
	callStart time.Time
	synced    bool
	// completeAsOf: every RR created before completeAsOf minus the create bound has been seen.
	completeAsOf time.Time
	// advanced is closed (and replaced) whenever completeAsOf moves; probeUntil: see AwaitFresh.
	advanced   chan struct{}
	probeUntil time.Time
	lastErr    error
	// written: this process's writes whose echo would prove the feed complete (NoteWritten).
	written map[string]written
}

// New builds an index that reads through cfg. Start runs it.
func New(cfg *rest.Config, o Options) (*Index, error) {
	if o.MarkKey == nil {
		return nil, errors.New("rrfacts: Options.MarkKey is required")
	}
	if o.Policy == nil || o.Kind.Kind == "" {
		return nil, errors.New("rrfacts: Options.Policy and Options.Kind are required")
	}
	rd := newReading(o.Policy, o.Kind, o.Finalizer)
	rc, err := restClient(cfg, o.Kind, rd)
	if err != nil {
		return nil, err
	}
	ix := &Index{o: o, rc: rc, rd: rd, nss: map[string]*nsFacts{}, marked: newMarked(), phases: map[string]string{}, keys: map[string]string{},
		moved: map[string]time.Time{}, started: time.Now(), queued: map[*entry]int64{}}
	nss := o.Namespaces
	if len(nss) == 0 {
		nss = []string{metav1.NamespaceAll}
	}
	for _, ns := range nss {
		ix.feeds = append(ix.feeds, &feed{ix: ix, namespace: ns, advanced: make(chan struct{})})
	}
	return ix, nil
}

// Start runs one reflector per watched namespace until ctx is done (manager.Runnable).
func (ix *Index) Start(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, f := range ix.feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := cache.NewReflectorWithOptions(f.listWatch(), &object{}, f, cache.ReflectorOptions{
				Name: "rrfacts/" + f.namespace,
			})
			r.RunWithContext(ctx)
		}()
	}
	wg.Wait()
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica decides.
func (ix *Index) NeedLeaderElection() bool { return false }

// Synced reports whether every watch has delivered its first complete list.
func (ix *Index) Synced() bool {
	for _, f := range ix.feeds {
		f.mu.Lock()
		s := f.synced
		f.mu.Unlock()
		if !s {
			return false
		}
	}
	return true
}

// Watches reports whether namespace is in the index's scope.
func (ix *Index) Watches(namespace string) bool { return ix.feedFor(namespace) != nil }

func (ix *Index) feedFor(namespace string) *feed {
	for _, f := range ix.feeds {
		if f.namespace == metav1.NamespaceAll || f.namespace == namespace {
			return f
		}
	}
	return nil
}

// Lookup returns the facts of the RRs of fingerprint fp in namespace, or *Untrusted.
//
// It answers only while the index is known complete up to a recent instant: a watch delivers
// events in the order the API server committed them, so when the index receives the creation of
// an RR stamped at c (or a list that began at c), it has already received every RR committed
// before then, which includes every RR created before c minus the API server's bound on a
// create (its request timeout). Lookup requires that c be within MaxLag of now. What a caller
// may conclude from the answer, and why that is enough, is argued in docs/design.md ("Reads").
func (ix *Index) Lookup(namespace, fp string, now time.Time) ([]decision.Fact, error) {
	facts, asOf, err := ix.Snapshot(namespace, fp)
	if err != nil {
		return nil, err
	}
	if ix.o.MaxLag <= 0 || now.Sub(asOf) > ix.o.MaxLag {
		return nil, &Untrusted{Reason: ReasonNotFresh}
	}
	return facts, nil
}

// Snapshot is a key's facts as the index holds them, and the instant they are complete as of
// (every object of the key created more than the API server's request bound before it is among
// them; it is read before the facts, which can only be newer), however long ago that was: for a caller whose argument needs a snapshot of
// the API server's commits, not a fresh one (package queue). Untrusted only when the index has
// not synced or does not watch the namespace.
func (ix *Index) Snapshot(namespace, fp string) ([]decision.Fact, time.Time, error) {
	f := ix.feedFor(namespace)
	if f == nil {
		return nil, time.Time{}, &Untrusted{Reason: ReasonNotWatched}
	}
	f.mu.Lock()
	synced, asOf := f.synced, f.completeAsOf
	f.mu.Unlock()
	if !synced {
		return nil, asOf, &Untrusted{Reason: ReasonNotSynced}
	}
	return ix.facts(namespace, fp), asOf, nil
}

// facts is a key's facts, under the read lock.
func (ix *Index) facts(namespace, fp string) []decision.Fact {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	nsf := ix.nss[namespace]
	if nsf == nil {
		return nil
	}
	g := nsf.byFP[fp]
	if g == nil {
		return nil
	}
	out := make([]decision.Fact, len(g.entries))
	for i, e := range g.entries {
		out[i] = e.fact().Fact
	}
	return out
}

// NoteWritten tells the index that this process sent a write of object name of namespace at
// sent, which the API server answered with resourceVersion rv. When the watch delivers that very
// version, every commit before it has been delivered, and the write committed after sent: the
// index is then complete as of sent, though nothing was created (package queue's own releases
// prove it so after a quiet spell).
func (ix *Index) NoteWritten(namespace, name, rv string, sent time.Time) {
	f := ix.feedFor(namespace)
	if f == nil || rv == "" {
		return
	}
	f.mu.Lock()
	if f.written == nil {
		f.written = map[string]written{}
	}
	if len(f.written) < maxWritten {
		f.written[namespace+"/"+name] = written{rv: rv, sent: sent}
	}
	f.mu.Unlock()
}

// written is a write NoteWritten awaits the echo of.
type written struct {
	rv   string
	sent time.Time
}

// maxWritten bounds the writes a feed awaits (a write whose echo never comes, its object deleted
// first, is dropped at the next relist).
const maxWritten = 4096

// echo advances the feed's completeness when o is the echo of a write NoteWritten awaits.
func (f *feed) echo(o *object) {
	id := o.Meta.Namespace + "/" + o.Meta.Name
	f.mu.Lock()
	w, ok := f.written[id]
	if ok && w.rv == o.Meta.ResourceVersion {
		delete(f.written, id)
	}
	f.mu.Unlock()
	if ok && w.rv == o.Meta.ResourceVersion {
		f.seen(w.sent)
	}
}

// AwaitFresh is for decisions that found the index not fresh (Lookup's ReasonNotFresh), which
// happens after a quiet spell longer than MaxLag. The first such decision returns false at once:
// it decides from consistent reads, and its create, once stored, proves the index complete again.
// The decisions that follow within max wait for that proof instead of each reading the API
// server, and report whether it came; if it does not come in time, they read too. Without it, a
// burst after a quiet spell costs one consistent List per concurrent decision, and a List by
// field selector costs the API server a scan of the namespace.
func (ix *Index) AwaitFresh(ctx context.Context, namespace string, max time.Duration) bool {
	f := ix.feedFor(namespace)
	if f == nil || ix.o.MaxLag <= 0 {
		return false
	}
	f.mu.Lock()
	now := time.Now()
	switch {
	case !f.synced:
		f.mu.Unlock()
		return false
	case now.Sub(f.completeAsOf) <= ix.o.MaxLag:
		f.mu.Unlock()
		return true
	case !now.Before(f.probeUntil):
		f.probeUntil = now.Add(max)
		f.mu.Unlock()
		return false
	}
	deadline, advanced := f.probeUntil, f.advanced
	f.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		case <-advanced:
			f.mu.Lock()
			fresh := time.Since(f.completeAsOf) <= ix.o.MaxLag
			advanced = f.advanced
			f.mu.Unlock()
			if fresh {
				return true
			}
		}
	}
}

// MayBeMarked reports whether fingerprint fp of namespace may have a high-water mark. It says
// true until LoadedMarks: an index that has not heard of the marks cannot rule one out.
func (ix *Index) MayBeMarked(namespace, fp string) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return !ix.marksLoaded || ix.marked.has(ix.o.MarkKey(namespace, fp))
}

// NoteMarked records marks that exist, by their key in the mark ConfigMaps
// ("<namespace>.<fingerprint[:32]>").
func (ix *Index) NoteMarked(keys ...string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, k := range keys {
		ix.marked.add(k)
	}
}

// NoteCovered records that the high-water mark of fingerprint fp of namespace is at least upTo:
// every RR of it numbered upTo or lower is Covered from now on, and stays so while it exists (a
// mark never goes down while its fingerprint has an RR).
func (ix *Index) NoteCovered(namespace, fp string, upTo int64) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if nsf := ix.nss[namespace]; nsf != nil {
		if g := nsf.byFP[fp]; g != nil {
			for _, e := range g.entries {
				if e.n > 0 && e.n <= upTo {
					e.covered = true
				}
			}
		}
	}
}

// KeyOf is the key (hex) and occurrence number the index holds for the object of that name.
func (ix *Index) KeyOf(namespace, name string) (keyHex string, n int64, ok bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if nsf := ix.nss[namespace]; nsf != nil {
		if e := nsf.byName[name]; e != nil {
			return e.g.fp, e.n, true
		}
	}
	return "", 0, false
}

// LoadedMarks says that every mark that existed before the index's watch began has been noted:
// from now on MayBeMarked can say no.
func (ix *Index) LoadedMarks() {
	ix.mu.Lock()
	ix.marksLoaded = true
	ix.mu.Unlock()
}

// Each calls fn for every RR in the index, under its read lock: fn must not block.
func (ix *Index) Each(fn func(RR)) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for ns, nsf := range ix.nss {
		for _, g := range nsf.byFP {
			for _, e := range g.entries {
				fn(RR{Namespace: ns, Fingerprint: g.fp, Fact: e.fact()})
			}
		}
	}
}

// Len is the number of RRs in the index.
func (ix *Index) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	n := 0
	for _, nsf := range ix.nss {
		n += len(nsf.byName)
	}
	return n
}

// PolicyName is the name of the policy whose objects the index holds.
func (ix *Index) PolicyName() string { return ix.o.Policy.Policy }

// put stores o's facts; the caller holds the lock. It returns o's key (hex; "" when the policy
// does not judge o: a match condition is false, or its key cannot be read) and whether o is being
// deleted while it carries the finalizer.
func (ix *Index) put(o *object) (keyHex string, deleting bool) {
	ns, name := o.Meta.Namespace, o.Meta.Name
	nsf := ix.nss[ns]
	if nsf == nil {
		nsf = &nsFacts{byName: map[string]*entry{}, byFP: map[string]*group{}}
		ix.nss[ns] = nsf
	}
	fact, keyHex, err := o.verdict.fact, o.verdict.keyHex, o.verdict.err
	e := nsf.byName[name]
	if keyHex == "" {
		// Outside the policy (or not any more: its key changed): no fact to keep.
		if e != nil {
			nsf.remove(name, e)
		}
		return "", false
	}
	if err != nil {
		evalErrors.WithLabelValues(ix.o.Policy.Policy).Inc()
	}
	if e == nil || e.g.fp != keyHex {
		if e != nil {
			nsf.remove(name, e)
		}
		g := nsf.byFP[keyHex]
		if g == nil {
			g = &group{fp: keyHex, ix: ix}
			nsf.byFP[keyHex] = g
		}
		e = &entry{g: g}
		if fact.N > 0 {
			e.n = fact.N
		} else {
			e.name = name
		}
		g.entries = append(g.entries, e)
		nsf.byName[name] = e
	}
	wasWaiting := e.waiting()
	e.phase, e.until = ix.intern(fact.Phase), 0
	if !fact.Until.IsZero() {
		e.until = fact.Until.Unix()
	}
	e.created = o.Meta.CreationTimestamp.Unix()
	e.held, e.lifted, e.cancelled = fact.Held, fact.Lifted, fact.Cancelled
	if fact.Queued.IsZero() {
		delete(ix.queued, e)
	} else {
		ix.queued[e] = fact.Queued.UnixNano()
	}
	e.finalized = ix.o.Finalizer != "" && slices.Contains(o.Meta.Finalizers, ix.o.Finalizer)
	e.deletedAt = 0
	if o.Meta.DeletionTimestamp != nil {
		e.deletedAt = o.Meta.DeletionTimestamp.Unix()
	}
	if wasWaiting && !e.waiting() {
		ix.noteMoved(ns, keyHex)
	}
	return keyHex, e.finalized && e.deletedAt != 0
}

// noteMoved records that a key's queue moved; the caller holds the lock.
func (ix *Index) noteMoved(ns, keyHex string) {
	if ix.o.OnQueue != nil {
		ix.moved[ns+"/"+keyHex] = time.Now()
	}
}

// maxInterned bounds the phases interned: a phase is one of a handful of enum values (the RR's 12),
// so a policy whose phase expression gives more is not giving a phase, and its strings are kept
// per object instead of growing the table without bound.
const maxInterned = 256

// intern shares the phase strings, which repeat across objects; the caller holds the lock.
func (ix *Index) intern(s string) string {
	if s == "" {
		return ""
	}
	if x, ok := ix.phases[s]; ok {
		return x
	}
	if len(ix.phases) < maxInterned {
		ix.phases[s] = s
	}
	return s
}

func (nsf *nsFacts) remove(name string, e *entry) {
	delete(nsf.byName, name)
	g := e.g
	delete(g.ix.queued, e)
	for i, x := range g.entries {
		if x == e {
			g.entries = append(g.entries[:i], g.entries[i+1:]...)
			break
		}
	}
	if len(g.entries) == 0 {
		delete(nsf.byFP, g.fp)
	}
}

// drop forgets a deleted RR; its fingerprint may have a mark from now on (rrguard released it
// only after raising the mark).
func (ix *Index) drop(ns, name string) (keyHex string) {
	if nsf := ix.nss[ns]; nsf != nil {
		if e := nsf.byName[name]; e != nil {
			ix.marked.add(ix.o.MarkKey(ns, e.g.fp))
			nsf.remove(name, e)
			if e.waiting() {
				ix.noteMoved(ns, e.g.fp)
			}
			return e.g.fp
		}
	}
	return ""
}

// listWatch reads RRs with the slim types, noting when each call begins.
func (f *feed) listWatch() *cache.ListWatch {
	rc := f.ix.rc
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			f.noteCall()
			out, err := f.list(ctx, opts)
			f.noteErr(err)
			return out, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			f.noteCall()
			opts.Watch = true
			w, err := rc.Get().Namespace(f.namespace).Resource(f.ix.o.Policy.GroupResource.Resource).
				VersionedParams(&opts, metav1.ParameterCodec).Watch(ctx)
			f.noteErr(err)
			return w, err
		},
	}
}

// list reads one list (or page) of the target, streamed (decodeListStream): an API server may
// answer the first list of a reflector whole, whatever its limit (from its watch cache).
func (f *feed) list(ctx context.Context, opts metav1.ListOptions) (*objectList, error) {
	body, err := f.ix.rc.Get().Namespace(f.namespace).Resource(f.ix.o.Policy.GroupResource.Resource).
		VersionedParams(&opts, metav1.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return decodeListStream(body, f.ix.rd)
}

// noteErr keeps the last error of a list or watch call (nil once one succeeds), for LastError.
func (f *feed) noteErr(err error) {
	f.mu.Lock()
	f.lastErr = err
	f.mu.Unlock()
}

// LastError is the last error a list or watch of the target gave, while the index has not synced
// since: why it cannot vouch (no RBAC for the target, say).
func (ix *Index) LastError() error {
	for _, f := range ix.feeds {
		f.mu.Lock()
		err, synced := f.lastErr, f.synced
		f.mu.Unlock()
		if err != nil && !synced {
			return err
		}
	}
	return nil
}

func (f *feed) noteCall() {
	f.mu.Lock()
	f.callStart = time.Now()
	f.mu.Unlock()
}

// seen advances the feed's proof of completeness to t.
func (f *feed) seen(t time.Time) {
	f.mu.Lock()
	if t.After(f.completeAsOf) {
		f.completeAsOf = t
		if f.advanced != nil {
			close(f.advanced)
		}
		f.advanced = make(chan struct{})
	}
	f.mu.Unlock()
}

func (f *feed) notify(deleting []*object) {
	if f.ix.o.OnDeleting == nil {
		return
	}
	for _, o := range deleting {
		f.ix.o.OnDeleting(o.Meta.Namespace, o.Meta.Name)
	}
}

func asObject(obj any) (*object, error) {
	o, ok := obj.(*object)
	if !ok {
		return nil, fmt.Errorf("rrfacts: unexpected %T from the watch", obj)
	}
	return o, nil
}

// Add implements cache.ReflectorStore: a create. Its creation timestamp proves the feed complete
// up to it.
func (f *feed) Add(obj any) error {
	o, err := f.upsert(obj)
	if err == nil {
		f.seen(o.Meta.CreationTimestamp.Time)
	}
	return err
}

// Update implements cache.ReflectorStore.
func (f *feed) Update(obj any) error {
	_, err := f.upsert(obj)
	return err
}

// upsert stores an object's facts and tells the releaser when it is being deleted with the
// finalizer on.
func (f *feed) upsert(obj any) (*object, error) {
	o, err := asObject(obj)
	if err != nil {
		return nil, err
	}
	f.ix.mu.Lock()
	keyHex, deleting := f.ix.put(o)
	q, queued := f.ix.queue(o.Meta.Namespace, keyHex, o.verdict.key)
	f.ix.mu.Unlock()
	f.echo(o)
	if deleting {
		f.notify([]*object{o})
	}
	if queued {
		f.ix.o.OnQueue(q.namespace, q.keyHex, q.key)
	}
	return o, nil
}

// queueKey is a key whose queue may have moved (Options.OnQueue).
type queueKey struct{ namespace, keyHex, key string }

// queue says whether the key keyHex of namespace has work for its queue's controller (held
// objects, or lifted ones: entry.queueWork) after a change to its objects, and keeps the key as
// the expression gives it while it does (key is "" when the caller does not know it: a
// deletion). The caller holds the lock.
func (ix *Index) queue(ns, keyHex, key string) (queueKey, bool) {
	if ix.o.OnQueue == nil || keyHex == "" {
		return queueKey{}, false
	}
	id := ns + "/" + keyHex
	held := false
	if nsf := ix.nss[ns]; nsf != nil {
		if g := nsf.byFP[keyHex]; g != nil {
			held = slices.ContainsFunc(g.entries, (*entry).queueWork)
		}
	}
	if !held {
		delete(ix.keys, id)
		delete(ix.moved, id)
		return queueKey{}, false
	}
	if key != "" {
		ix.keys[id] = key
	}
	return queueKey{namespace: ns, keyHex: keyHex, key: ix.keys[id]}, true
}

// Delete implements cache.ReflectorStore.
func (f *feed) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	o, err := asObject(obj)
	if err != nil {
		return err
	}
	f.ix.mu.Lock()
	keyHex := f.ix.drop(o.Meta.Namespace, o.Meta.Name)
	q, queued := f.ix.queue(o.Meta.Namespace, keyHex, "")
	f.ix.mu.Unlock()
	if queued {
		f.ix.o.OnQueue(q.namespace, q.keyHex, q.key)
	}
	return nil
}

// Replace implements cache.ReflectorStore: a complete list, as of the call that fetched it.
func (f *feed) Replace(items []any, _ string) error {
	objs := make([]*object, 0, len(items))
	for _, it := range items {
		o, err := asObject(it)
		if err != nil {
			return err
		}
		objs = append(objs, o)
	}
	var deleting []*object
	f.ix.mu.Lock()
	// What this process knows of the marks outlives a relist: a mark does not go down while
	// its fingerprint has an RR, so an RR still listed under the same fingerprint stays covered.
	covered := map[string]map[string]string{} // namespace -> name -> fingerprint
	for ns, nsf := range f.ix.nss {
		if f.namespace == metav1.NamespaceAll || ns == f.namespace {
			for name, e := range nsf.byName {
				if e.covered {
					if covered[ns] == nil {
						covered[ns] = map[string]string{}
					}
					covered[ns][name] = e.g.fp
				}
			}
		}
	}
	for ns, nsf := range f.ix.nss {
		if f.namespace == metav1.NamespaceAll || ns == f.namespace {
			// An RR missing from the new list was deleted while the watch was down: its
			// fingerprint may have a mark. Every fingerprint of the old list counts as such
			// (a relist is rare; a needless mark read is cheap).
			for fp := range nsf.byFP {
				f.ix.marked.add(f.ix.o.MarkKey(ns, fp))
			}
			for _, e := range nsf.byName {
				delete(f.ix.queued, e)
			}
			delete(f.ix.nss, ns)
		}
	}
	queues := map[queueKey]bool{}
	for _, o := range objs {
		keyHex, del := f.ix.put(o)
		if del {
			deleting = append(deleting, o)
		}
		if q, ok := f.ix.queue(o.Meta.Namespace, keyHex, o.verdict.key); ok {
			queues[q] = true
		}
		if fp, ok := covered[o.Meta.Namespace][o.Meta.Name]; ok && fp == keyHex {
			f.ix.nss[o.Meta.Namespace].byName[o.Meta.Name].covered = true
		}
	}
	f.ix.mu.Unlock()
	f.mu.Lock()
	start := f.callStart
	f.synced = true
	f.written = nil
	f.mu.Unlock()
	f.seen(start)
	f.notify(deleting)
	for q := range queues {
		// The key's entry may have been recorded before the key was known: take the last.
		if q.key != "" {
			f.ix.o.OnQueue(q.namespace, q.keyHex, q.key)
		}
	}
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resync.
func (f *feed) Resync() error { return nil }
