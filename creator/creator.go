// Package creator is what an RR creator (Kubernaut's Gateway, an agent tool, anything else) needs
// to turn rrguard's answers into an exact occurrence count: CreateOrRecord creates the RR for a
// signal or, when rrguard or the API server answers 409 AlreadyExists naming the RR in flight,
// records the repeat on that RR's status.deduplication. rrguard itself writes nothing; the
// creator stays the only writer of status.deduplication.
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
	"github.com/rrguard/rrguard/rules"
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
	// Requests is how many API requests were sent in all (creates, reads, status writes).
	Requests int
	// Retries is how many tries of the budget (Options.MaxAttempts) were spent.
	Retries int
	// Ambiguous is true when a status write's response was lost after the write may have
	// happened and was retried: the occurrence count may then be one too high.
	Ambiguous bool
}

// Options tune retries. Zero fields take their defaults: 10 tries, 50 ms doubling to 2 s, with
// full jitter, within the context's deadline. Negative values are refused.
type Options struct {
	// MaxAttempts bounds one CreateOrRecord: every failure worth a retry (a transient error, a
	// write conflict, a 409 naming an RR that has finished or is gone) spends one try and one
	// backoff, whichever step it hit; when all are spent, ErrGaveUp.
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

// CreateOrRecord lands one signal: it creates rr, or records the repeat on the RR in flight.
// rr is a template: it is not modified, and may be reused for later signals.
//
// Transient failures (429, 500, 502-504, timeouts, connection refused or reset) are retried with
// capped exponential backoff and full jitter; any other error (422 Invalid, 400, 403, an error it
// does not know) is returned at once. A 409 naming an RR that has finished or is gone by the time
// it is read means the signal belongs to a new remediation: it creates again, within the same
// budget.
func CreateOrRecord(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest, o Options) (Result, error) {
	o, err := o.validated()
	if err != nil {
		return Result{}, err
	}
	tmpl := rr.DeepCopy()
	if tmpl.Annotations[SignalIDAnnotation] == "" {
		if tmpl.Annotations == nil {
			tmpl.Annotations = map[string]string{}
		}
		tmpl.Annotations[SignalIDAnnotation] = newID()
	}
	s := &signal{c: c, ns: tmpl.Namespace, id: tmpl.Annotations[SignalIDAnnotation], budget: budget{o: o, next: o.InitialBackoff}}
	err = s.land(ctx, tmpl)
	s.res.Retries = s.budget.spent
	return s.res, err
}

// signal is one CreateOrRecord in progress.
type signal struct {
	c      client.Client
	ns, id string
	res    Result
	budget budget
}

// land is the one loop: create; on a 409, read the RR it names and record the signal there,
// unless that RR no longer holds signals, in which case create again.
func (s *signal) land(ctx context.Context, tmpl *v1alpha1.RemediationRequest) error {
	for {
		attempt := tmpl.DeepCopy()
		s.res.Attempts++
		s.res.Requests++
		err := s.c.Create(ctx, attempt)
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
			held, err := s.get(ctx, name)
			switch {
			case apierrors.IsNotFound(err):
				if err := s.budget.spend(ctx, fmt.Errorf("the RR %s named by the 409 is gone: %w", name, err)); err != nil {
					return err
				}
				continue
			case err != nil:
				return err
			case held.Annotations[SignalIDAnnotation] == s.id:
				// An earlier try was stored and its answer lost: this signal created it, and the
				// RR holds it already.
				s.res.Name, s.res.New = name, true
				return nil
			case !rules.InFlight(held, time.Now()):
				if err := s.budget.spend(ctx, fmt.Errorf("the RR %s named by the 409 is no longer in flight (phase %s)", name, held.Status.OverallPhase)); err != nil {
					return err
				}
				continue
			}
			s.res.Name, s.res.New = name, false
			recorded, err := s.recordRepeat(ctx, held)
			if recorded || err != nil {
				return err
			}
			// The RR finished or went away before the repeat could be written: a new remediation.
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

// countRepeat adds one occurrence to the count Signals reads: a count still 0 is the creating
// signal's 1, seen since the RR was created.
func countRepeat(d *v1alpha1.DeduplicationStatus, created, now metav1.Time) {
	if d.OccurrenceCount == 0 {
		d.FirstSeenAt, d.OccurrenceCount = &created, 1
	}
	d.OccurrenceCount++
	d.LastSeenAt = &now
}

// recordRepeat writes a repeat on the RR in flight. recorded is false when the RR finished or
// went away before a write that surely did not apply: the signal then belongs to a new RR.
func (s *signal) recordRepeat(ctx context.Context, cur *v1alpha1.RemediationRequest) (recorded bool, err error) {
	return s.write(ctx, cur)
}

// write counts a repeat in status.deduplication with a merge patch guarded by resourceVersion:
// status fields it does not model survive, and concurrent writers conflict instead of
// overwriting each other. A conflict re-reads and tries again, within the budget; if the RR has
// finished or gone meanwhile (and no write may have applied), recorded is false. A transient
// failure of the write itself may have applied, so it marks the result ambiguous, and from then
// on the signal stays on this RR (moving it would count it twice).
func (s *signal) write(ctx context.Context, cur *v1alpha1.RemediationRequest) (bool, error) {
	mayHaveApplied := false
	for {
		next := cur.DeepCopy()
		patch := client.MergeFromWithOptions(cur, client.MergeFromWithOptimisticLock{})
		d := next.Status.Deduplication
		if d == nil {
			d = &v1alpha1.DeduplicationStatus{}
		}
		countRepeat(d, cur.CreationTimestamp, metav1.Now())
		next.Status.Deduplication = d
		s.res.Requests++
		err := s.c.Status().Patch(ctx, next, patch)
		switch {
		case err == nil:
			return true, nil
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		case Transient(err):
			s.res.Ambiguous, mayHaveApplied = true, true
		default:
			return false, err
		}
		if err := s.budget.spend(ctx, fmt.Errorf("recording on %s: %w", cur.Name, err)); err != nil {
			return false, err
		}
		cur, err = s.get(ctx, cur.Name)
		switch {
		case apierrors.IsNotFound(err) && !mayHaveApplied:
			return false, nil
		case err != nil:
			return false, fmt.Errorf("recording on %s: %w", next.Name, err)
		case !mayHaveApplied && !rules.InFlight(cur, time.Now()):
			return false, nil
		}
	}
}

// get reads one RR as of now, retrying transient failures within the budget.
func (s *signal) get(ctx context.Context, name string) (*v1alpha1.RemediationRequest, error) {
	for {
		var rr v1alpha1.RemediationRequest
		s.res.Requests++
		err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, &rr)
		if !Transient(err) {
			return &rr, err
		}
		if err := s.budget.spend(ctx, err); err != nil {
			return nil, err
		}
	}
}

// budget is the one retry policy of a CreateOrRecord: a number of tries shared by every step,
// and an exponential backoff with full jitter, so that creators refused together do not retry
// together.
type budget struct {
	o     Options
	spent int
	next  time.Duration
}

// spend takes one try for a failure worth retrying and sleeps before it, or says why there is
// none left.
func (b *budget) spend(ctx context.Context, cause error) error {
	b.spent++
	if b.spent >= b.o.MaxAttempts {
		return fmt.Errorf("%w (%d tries): %w", ErrGaveUp, b.spent, cause)
	}
	d := time.Duration(rand.Int64N(int64(b.next))) + 1
	b.next = min(2*b.next, b.o.MaxBackoff)
	t := time.NewTimer(d)
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
