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
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// SignalIDAnnotation carries a per-signal ID on the RR a signal created, so that a retried create
// whose first try was in fact stored is recognised as the same signal, not counted as a repeat.
const SignalIDAnnotation = "rrguard.kubernaut.ai/signal-id"

// Result says where a signal landed.
type Result struct {
	// Name of the RR that holds the signal.
	Name string
	// New is true when this signal created the RR; false when it was recorded as a repeat.
	New bool
	// Attempts is how many creates were sent.
	Attempts int
	// Ambiguous is true when a status write's response was lost after the write may have
	// happened and was retried: the occurrence count may then be one too high.
	Ambiguous bool
}

// Options tune retries. The zero value retries for up to 10 attempts, 50 ms doubling to 2 s,
// with full jitter, within the context's deadline.
type Options struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

func (o Options) withDefaults() Options {
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 10
	}
	if o.InitialBackoff == 0 {
		o.InitialBackoff = 50 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 2 * time.Second
	}
	return o
}

// ErrGaveUp wraps the last transient error after MaxAttempts.
var ErrGaveUp = errors.New("gave up after retries")

// CreateOrRecord lands one signal: it creates rr, or records the repeat on the RR in flight.
// Transient failures (timeouts, 429, 5xx, webhook unreachable) are retried with capped exponential
// backoff and jitter; client mistakes (422 Invalid, 400, 403) are returned at once.
func CreateOrRecord(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest, o Options) (Result, error) {
	o = o.withDefaults()
	if rr.Annotations[SignalIDAnnotation] == "" {
		if rr.Annotations == nil {
			rr.Annotations = map[string]string{}
		}
		rr.Annotations[SignalIDAnnotation] = newID()
	}
	signalID := rr.Annotations[SignalIDAnnotation]
	var res Result
	backoff := o.InitialBackoff
	for {
		res.Attempts++
		attempt := rr.DeepCopy()
		err := c.Create(ctx, attempt)
		switch {
		case err == nil:
			res.Name, res.New = attempt.Name, true
			return res, res.recordFirst(ctx, c, rr.Namespace, o)
		case apierrors.IsAlreadyExists(err):
			name := detailsName(err)
			if name == "" {
				return res, fmt.Errorf("409 without the RR's name: %w", err)
			}
			res.Name = name
			mine, err := isMine(ctx, c, rr.Namespace, name, signalID, o)
			if err != nil {
				return res, err
			}
			if mine {
				// An earlier try was stored and its answer lost: this signal created it.
				res.New = true
				return res, res.recordFirst(ctx, c, rr.Namespace, o)
			}
			return res, res.recordRepeat(ctx, c, rr.Namespace, o)
		case !Transient(err):
			return res, err
		}
		if res.Attempts >= o.MaxAttempts {
			return res, fmt.Errorf("%w (%d attempts): %w", ErrGaveUp, res.Attempts, err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return res, err
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// Transient reports whether a failed request is worth retrying: the API server or rrguard could
// not answer, as opposed to refusing the request.
func Transient(err error) bool {
	var netErr net.Error
	var st apierrors.APIStatus
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err):
		return true
	case errors.As(err, &netErr):
		return true
	case errors.As(err, &st):
		return st.Status().Code >= 500 || st.Status().Code == 429
	}
	// Connection refused or reset, EOF: no status at all.
	return true
}

func detailsName(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Details != nil {
		return st.Status().Details.Name
	}
	return ""
}

func isMine(ctx context.Context, c client.Client, ns, name, signalID string, o Options) (bool, error) {
	var rr v1alpha1.RemediationRequest
	if err := retryTransient(ctx, o, func() error { return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &rr) }); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return rr.Annotations[SignalIDAnnotation] == signalID, nil
}

// recordFirst sets firstSeenAt and occurrenceCount 1 on a new RR, unless a repeat got there first
// (a repeat counts the first signal too, see recordRepeat), so counts add up in any order.
func (r *Result) recordFirst(ctx context.Context, c client.Client, ns string, o Options) error {
	return r.updateStatus(ctx, c, ns, o, func(d *v1alpha1.DeduplicationStatus, now metav1.Time) bool {
		if d.OccurrenceCount > 0 {
			return false
		}
		d.FirstSeenAt, d.LastSeenAt, d.OccurrenceCount = &now, &now, 1
		return true
	})
}

// recordRepeat adds one occurrence. A count still 0 means the creator's own first write has not
// landed yet: the first signal counts as 1 here, and recordFirst then leaves the count alone.
func (r *Result) recordRepeat(ctx context.Context, c client.Client, ns string, o Options) error {
	return r.updateStatus(ctx, c, ns, o, func(d *v1alpha1.DeduplicationStatus, now metav1.Time) bool {
		if d.OccurrenceCount == 0 {
			d.FirstSeenAt, d.OccurrenceCount = &now, 1
		}
		d.OccurrenceCount++
		d.LastSeenAt = &now
		return true
	})
}

// updateStatus applies change with optimistic concurrency (retry on conflict) and retries
// transient failures; a transient failure of the write itself may have been applied, so it marks
// the result ambiguous.
func (r *Result) updateStatus(ctx context.Context, c client.Client, ns string, o Options,
	change func(*v1alpha1.DeduplicationStatus, metav1.Time) bool) error {
	backoff := o.InitialBackoff
	for attempt := 1; ; attempt++ {
		var rr v1alpha1.RemediationRequest
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: r.Name}, &rr)
		if err == nil {
			// A merge patch of deduplication only, guarded by resourceVersion: fields of the
			// status this helper does not model survive, and concurrent writers conflict.
			patch := client.MergeFromWithOptions(rr.DeepCopy(), client.MergeFromWithOptimisticLock{})
			d := rr.Status.Deduplication
			if d == nil {
				d = &v1alpha1.DeduplicationStatus{}
			}
			if !change(d, metav1.Now()) {
				return nil
			}
			rr.Status.Deduplication = d
			err = c.Status().Patch(ctx, &rr, patch)
			if err == nil {
				return nil
			}
			if Transient(err) {
				r.Ambiguous = true
			}
		}
		switch {
		case apierrors.IsConflict(err):
			continue
		case !Transient(err):
			return err
		case attempt >= o.MaxAttempts:
			return fmt.Errorf("%w recording on %s: %w", ErrGaveUp, r.Name, err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// retryTransient runs f until it succeeds, fails for good, or o.MaxAttempts are spent.
func retryTransient(ctx context.Context, o Options, f func() error) error {
	backoff := o.InitialBackoff
	for attempt := 1; ; attempt++ {
		err := f()
		switch {
		case !Transient(err):
			return err
		case attempt >= o.MaxAttempts:
			return fmt.Errorf("%w (%d attempts): %w", ErrGaveUp, attempt, err)
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}

// sleep waits a random time up to d (full jitter), so that creators refused together do not
// retry together.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(time.Duration(rand.Int64N(int64(d)) + 1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func newID() string {
	b := make([]byte, 16)
	_, _ = cryptorand.Read(b)
	return hex.EncodeToString(b)
}
