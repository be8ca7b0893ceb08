// Package creator is what an RR creator (Kubernaut's Gateway, an agent tool, anything else) needs
// to turn rrguard's answers into an exact occurrence count: Creator.CreateOrRecord creates the RR
// for a signal or, when rrguard or the API server answers 409 AlreadyExists naming the RR in
// flight, records the repeat on that RR's status.deduplication, coalescing the repeats that meet
// in one process into one write. rrguard itself writes nothing; the creator stays the only writer
// of status.deduplication.
package creator

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// SignalIDAnnotation carries a per-signal ID on the RR a signal created, so that a retried create
// whose first try was in fact stored is recognised as the same signal, not counted as a repeat.
// A caller may set it on the RR it passes (its own signal ID, stable across process restarts);
// otherwise each call draws a new one.
const SignalIDAnnotation = "rrguard.kubernaut.ai/signal-id"

// Result says where a signal landed.
type Result struct {
	// Name of the RR that holds the signal.
	Name string
	// New is true when this signal created the RR; false when it was recorded as a repeat.
	New bool
	// Attempts is how many creates were sent.
	Attempts int
	// Requests is how many API requests this signal sent alone (its creates).
	Requests int
	// Batch is how many signals shared the status write that recorded this one (0 for a signal
	// that created its RR), and BatchRequests how many requests (reads and writes) that batch
	// sent: this signal's share is BatchRequests/Batch.
	Batch, BatchRequests int
	// Retries is how many tries of the budget (Options.MaxAttempts) were spent, by this
	// signal's creates and by the batches it joined.
	Retries int
	// Ambiguous is true when a status write's response was lost after the write may have
	// happened and was retried, or when the call was cancelled while its write was under way:
	// the occurrence count may then be too high by the signals of that batch.
	Ambiguous bool
}

// Options tune retries. Zero fields take their defaults: 10 tries, 50 ms doubling to 2 s, with
// full jitter, within the context's deadline. Negative values are refused.
type Options struct {
	// MaxAttempts bounds one CreateOrRecord's creates: every failure worth a retry (a transient
	// error, a 409 naming an RR that has finished or is gone) spends one try and one backoff;
	// when all are spent, ErrGaveUp. It bounds each batch's status write alike (its transient
	// errors; writes it loses to other processes are bounded at 10 x MaxAttempts): when the
	// batch gives up, every signal in it gets ErrGaveUp.
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// ErrInvalidOptions is returned, before any request, for Options that cannot work.
var ErrInvalidOptions = errors.New("invalid creator options")

func (o Options) validated() (Options, error) {
	if o.MaxAttempts < 0 || o.InitialBackoff < 0 || o.MaxBackoff < 0 {
		return o, fmt.Errorf("%w: MaxAttempts %d, InitialBackoff %s, MaxBackoff %s: none may be negative",
			ErrInvalidOptions, o.MaxAttempts, o.InitialBackoff, o.MaxBackoff)
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 10
	}
	if o.InitialBackoff == 0 {
		o.InitialBackoff = 50 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = max(2*time.Second, o.InitialBackoff)
	}
	if o.MaxBackoff < o.InitialBackoff {
		return o, fmt.Errorf("%w: MaxBackoff %s is below InitialBackoff %s", ErrInvalidOptions, o.MaxBackoff, o.InitialBackoff)
	}
	return o, nil
}

// ErrGaveUp wraps the last retryable error after Options.MaxAttempts tries.
var ErrGaveUp = errors.New("gave up after retries")

// ErrNoDetails is returned when a 409 AlreadyExists does not name the RR that holds the signal
// (neither rrguard nor the API server answers so; something else in the path did).
var ErrNoDetails = errors.New("409 AlreadyExists without the RR's name in details")

// Creator lands signals for one process. Make one per process (per Gateway replica) and share it
// between goroutines: repeats of the same RR that meet in it are recorded together, in one status
// write (see recorder).
type Creator struct {
	c   client.Client
	o   Options
	rec *recorder
}

// New returns a Creator that sends through c, with retry options o.
func New(c client.Client, o Options) (*Creator, error) {
	o, err := o.validated()
	if err != nil {
		return nil, err
	}
	return &Creator{c: c, o: o, rec: &recorder{c: c, o: o, rrs: map[client.ObjectKey]*queue{}}}, nil
}

// CreateOrRecord lands one signal: it creates rr, or records the repeat on the RR in flight.
// rr is a template: it is not modified, and may be reused for later signals.
//
// Transient failures (429, 500, 502-504, timeouts, connection refused or reset) are retried with
// capped exponential backoff and full jitter; any other error (422 Invalid, 400, 403, an error it
// does not know) is returned at once. A 409 naming an RR that has finished or is gone by the time
// it is read means the signal belongs to a new remediation: it creates again, within the same
// budget. A repeat returns once the status write that carries it has succeeded.
func (cr *Creator) CreateOrRecord(ctx context.Context, rr *v1alpha1.RemediationRequest) (Result, error) {
	tmpl := rr.DeepCopy()
	if tmpl.Annotations[SignalIDAnnotation] == "" {
		if tmpl.Annotations == nil {
			tmpl.Annotations = map[string]string{}
		}
		tmpl.Annotations[SignalIDAnnotation] = newID()
	}
	s := &signal{cr: cr, ns: tmpl.Namespace, id: tmpl.Annotations[SignalIDAnnotation], budget: newBudget(cr.o)}
	err := s.land(ctx, tmpl)
	s.res.Retries += s.budget.spent
	return s.res, err
}

// signal is one CreateOrRecord in progress.
type signal struct {
	cr     *Creator
	ns, id string
	res    Result
	budget budget
}

// land is the one loop: create; on a 409, have the RR it names record the signal, unless that RR
// no longer holds signals, in which case create again.
func (s *signal) land(ctx context.Context, tmpl *v1alpha1.RemediationRequest) error {
	for {
		attempt := tmpl.DeepCopy()
		s.res.Attempts++
		s.res.Requests++
		err := s.cr.c.Create(ctx, attempt)
		switch {
		case err == nil:
			// The new RR holds its first signal with no write (see Signals).
			s.res.Name, s.res.New = attempt.Name, true
			return nil
		case apierrors.IsAlreadyExists(err):
			name := detailsName(err)
			if name == "" {
				return fmt.Errorf("%w: %w", ErrNoDetails, err)
			}
			v := s.cr.rec.record(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, s.id)
			s.res.Batch, s.res.BatchRequests = v.batch, v.requests
			s.res.Ambiguous = s.res.Ambiguous || v.ambiguous
			s.res.Retries += v.retries
			switch v.outcome {
			case recorded:
				s.res.Name, s.res.New = name, false
				return nil
			case ownCreate:
				// An earlier try was stored and its answer lost: this signal created the RR,
				// which holds it already.
				s.res.Name, s.res.New = name, true
				return nil
			case elsewhere:
				if err := s.budget.spend(ctx, v.err); err != nil {
					return err
				}
			default:
				return v.err
			}
		case Transient(err):
			if err := s.budget.spend(ctx, err); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// Signals is how many signals an RR holds: its status.deduplication.occurrenceCount, or 1 while it
// has none. A new RR holds the signal that created it without a status write (Kubernaut's
// Gateway writes none either), so a new remediation costs one request; the first repeat writes
// the count 2.
func Signals(rr *v1alpha1.RemediationRequest) int32 {
	if d := rr.Status.Deduplication; d != nil && d.OccurrenceCount > 0 {
		return d.OccurrenceCount
	}
	return 1
}

// countRepeats adds n occurrences to the count Signals reads: a count still 0 is the creating
// signal's 1, seen since the RR was created.
func countRepeats(d *v1alpha1.DeduplicationStatus, n int32, created, now metav1.Time) {
	if d.OccurrenceCount == 0 {
		d.FirstSeenAt, d.OccurrenceCount = &created, 1
	}
	d.OccurrenceCount += n
	d.LastSeenAt = &now
}

// budget is the one retry policy of a CreateOrRecord: a number of tries shared by every step,
// and an exponential backoff with full jitter, so that creators refused together do not retry
// together.
type budget struct {
	o         Options
	spent     int
	conflicts int // writes lost to other writers (spendOnConflict)
	next      time.Duration
}

func newBudget(o Options) budget { return budget{o: o, next: o.InitialBackoff} }

// retries is every write after the first: tries spent and writes lost to other writers.
func (b *budget) retries() int { return b.spent + b.conflicts }

// spend takes one try for a failure worth retrying and sleeps before it (up to a limit that
// doubles each time), or says why there is none left.
func (b *budget) spend(ctx context.Context, cause error) error {
	limit := b.next
	b.next = min(2*b.next, b.o.MaxBackoff)
	return b.take(ctx, cause, limit)
}

// conflictsPerTry is how many lost writes a batch may take for each try of its budget.
const conflictsPerTry = 10

// spendOnConflict pauses after a write lost to another writer's. That writer succeeded, so the
// count is moving and nothing is overloaded: the pause only has to fall out of step with it, and
// does not grow. Nor does a loss spend a try: with four processes on one RR, a batch that lost
// ten times in a row was measured to happen (a benchmark round gave up on 32 signals that way);
// losses are bounded on their own, at conflictsPerTry x MaxAttempts.
func (b *budget) spendOnConflict(ctx context.Context, cause error) error {
	b.conflicts++
	if b.conflicts >= conflictsPerTry*b.o.MaxAttempts {
		return fmt.Errorf("%w (%d writes lost to other writers): %w", ErrGaveUp, b.conflicts, cause)
	}
	return b.pause(ctx, cause, b.o.InitialBackoff)
}

func (b *budget) take(ctx context.Context, cause error, limit time.Duration) error {
	b.spent++
	if b.spent >= b.o.MaxAttempts {
		return fmt.Errorf("%w (%d tries): %w", ErrGaveUp, b.spent, cause)
	}
	return b.pause(ctx, cause, limit)
}

func (b *budget) pause(ctx context.Context, cause error, limit time.Duration) error {
	t := time.NewTimer(time.Duration(rand.Int64N(int64(limit))) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w (last failure: %w)", ctx.Err(), cause)
	case <-t.C:
		return nil
	}
}

// Transient reports whether a failed request is known to be worth retrying: the API server or
// rrguard could not answer (429, 500 — which is how the API server reports a webhook it could not
// call —, 502, 503, 504, a server or client timeout, a refused, reset or lost connection), as
// opposed to refusing the request. Anything else, unknown errors included, is not.
func Transient(err error) bool {
	var st apierrors.APIStatus
	var netErr net.Error
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.As(err, &st):
		switch st.Status().Code {
		case 429, 500, 502, 503, 504:
			return true
		}
		return apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err)
	case utilnet.IsConnectionRefused(err), utilnet.IsConnectionReset(err), utilnet.IsHTTP2ConnectionLost(err),
		utilnet.IsProbableEOF(err):
		return true
	case errors.As(err, &netErr):
		return netErr.Timeout()
	}
	return false
}

func detailsName(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Details != nil {
		return st.Status().Details.Name
	}
	return ""
}

func newID() string {
	b := make([]byte, 16)
	_, _ = cryptorand.Read(b)
	return hex.EncodeToString(b)
}
