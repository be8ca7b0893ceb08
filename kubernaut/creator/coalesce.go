package creator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/kubernaut"
)

// recorder coalesces the repeats of one process. During a storm every signal's create is refused
// with a 409 naming the same RR; recording each with its own read-modify-write makes the writers
// conflict with each other, O(concurrency) requests per signal. Instead the repeats of one RR
// queue, and one writer at a time takes the whole queue as a batch: one read, one write that adds
// the batch's size to the count, and every signal in it returns once that write has succeeded.
// Repeats arriving while a write is under way form the next batch. Only writers in other processes
// can conflict with it, which the budget's jittered backoff bounds.
type recorder struct {
	c  client.Client
	o  Options
	mu sync.Mutex
	// rrs holds a queue for each RR with a writer at work; the writer removes it when the
	// queue is empty.
	rrs map[client.ObjectKey]*queue
}

type queue struct{ waiting []*repeat }

// repeat is one signal waiting to be recorded.
type repeat struct {
	id string
	// taken is set, under recorder.mu, when a batch takes the repeat: from then on a write may
	// carry it, and a caller leaving early cannot withdraw it.
	taken bool
	done  chan verdict
}

type outcome int

const (
	failed    outcome = iota
	recorded          // counted by a write that succeeded
	ownCreate         // the RR carries this signal's ID: its own earlier create was stored
	elsewhere         // the RR is gone or finished, and no write carrying it may have applied
)

type verdict struct {
	outcome   outcome
	err       error
	ambiguous bool
	batch     int // signals the batch's last write carried
	requests  int // requests the batch sent
	retries   int // tries of the batch's budget spent
}

// record queues one repeat for the RR key and waits for its verdict. The first repeat of an idle
// RR starts its writer.
func (r *recorder) record(ctx context.Context, key client.ObjectKey, id string) verdict {
	me := &repeat{id: id, done: make(chan verdict, 1)}
	r.mu.Lock()
	q, busy := r.rrs[key]
	if !busy {
		q = &queue{}
		r.rrs[key] = q
	}
	q.waiting = append(q.waiting, me)
	r.mu.Unlock()
	if !busy {
		// The writer outlives any one caller's context: it serves the whole queue, and the
		// budget bounds how long it tries.
		go r.write(context.WithoutCancel(ctx), key, q)
	}
	select {
	case v := <-me.done:
		return v
	case <-ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !me.taken {
		q.waiting = slices.DeleteFunc(q.waiting, func(r *repeat) bool { return r == me })
		return verdict{err: ctx.Err()}
	}
	// A write may carry this signal after the caller has gone.
	return verdict{err: ctx.Err(), ambiguous: true}
}

// take moves the waiting repeats into batch; when none wait and batch is empty, it retires the
// queue, so the next repeat starts a new writer.
func (r *recorder) take(key client.ObjectKey, q *queue, batch []*repeat) []*repeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range q.waiting {
		w.taken = true
	}
	batch = append(batch, q.waiting...)
	q.waiting = nil
	if len(batch) == 0 {
		delete(r.rrs, key)
	}
	return batch
}

// write serves one RR's queue until it is empty, one batch at a time.
func (r *recorder) write(ctx context.Context, key client.ObjectKey, q *queue) {
	for {
		batch := r.take(key, q, nil)
		if len(batch) == 0 {
			return
		}
		r.writeBatch(ctx, key, q, batch)
	}
}

// writeBatch records batch on the RR, or tells each repeat why not. It is the read-modify-write
// of one occurrence counter, guarded by resourceVersion so that writers in other processes
// conflict instead of overwriting each other. Exactness holds per batch: a write that failed
// surely (a conflict, a 404) applied nothing, so the batch reads again and, if the RR is still in
// flight, writes again; repeats that queued meanwhile join it, having been in no write yet. A
// write whose answer was lost may have applied: from then on the batch stays on this RR, takes no
// one new, and every repeat in it is marked ambiguous (the count may be high by the batch's size).
func (r *recorder) writeBatch(ctx context.Context, key client.ObjectKey, q *queue, batch []*repeat) {
	b := newBudget(r.o)
	v := verdict{}
	mayHaveApplied := false
	end := func(o outcome, err error) {
		v.outcome, v.err, v.ambiguous, v.retries = o, err, mayHaveApplied, b.retries()
		for _, w := range batch {
			w.done <- v
		}
	}
	for {
		var cur v1alpha1.RemediationRequest
		v.requests++
		err := r.c.Get(ctx, key, &cur)
		switch {
		case Transient(err):
			if err := b.spend(ctx, fmt.Errorf("reading %s: %w", key.Name, err)); err != nil {
				end(failed, err)
				return
			}
			continue
		case apierrors.IsNotFound(err) && !mayHaveApplied:
			end(elsewhere, fmt.Errorf("the RR %s named by the 409 is gone: %w", key.Name, err))
			return
		case err != nil:
			end(failed, fmt.Errorf("reading %s: %w", key.Name, err))
			return
		case !mayHaveApplied && !kubernaut.InFlight(&cur, time.Now()):
			end(elsewhere, fmt.Errorf("the RR %s named by the 409 is no longer in flight (phase %s)", key.Name, cur.Status.OverallPhase))
			return
		}
		if !mayHaveApplied {
			batch = r.take(key, q, batch)
		}
		v.ambiguous, v.retries = mayHaveApplied, b.retries()
		batch = withoutOwnCreate(batch, cur.Annotations[SignalIDAnnotation], v)
		if len(batch) == 0 {
			return
		}
		next := cur.DeepCopy()
		d := next.Status.Deduplication
		if d == nil {
			d = &v1alpha1.DeduplicationStatus{}
		}
		countRepeats(d, int32(len(batch)), cur.CreationTimestamp, metav1.Now())
		next.Status.Deduplication = d
		v.requests++
		v.batch = len(batch)
		err = r.c.Status().Patch(ctx, next, client.MergeFromWithOptions(&cur, client.MergeFromWithOptimisticLock{}))
		switch {
		case err == nil:
			end(recorded, nil)
			return
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
			err = b.spendOnConflict(ctx, fmt.Errorf("recording on %s: %w", key.Name, err))
		case Transient(err):
			mayHaveApplied = true
			err = b.spend(ctx, fmt.Errorf("recording on %s: %w", key.Name, err))
		default:
			err = fmt.Errorf("recording on %s: %w", key.Name, err)
		}
		if err != nil {
			end(failed, err)
			return
		}
	}
}

// withoutOwnCreate answers, and drops from the batch, the repeat whose ID the RR carries: its
// create was stored and its answer lost, so the RR holds it already and counting it would count
// it twice.
func withoutOwnCreate(batch []*repeat, id string, v verdict) []*repeat {
	if id == "" {
		return batch
	}
	i := slices.IndexFunc(batch, func(w *repeat) bool { return w.id == id })
	if i < 0 {
		return batch
	}
	v.outcome = ownCreate
	batch[i].done <- v
	return slices.Delete(batch, i, i+1)
}
