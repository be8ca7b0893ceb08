// Package gateway emulates how Kubernaut's Gateway creates RemediationRequests today, from the
// facts in shared/kubernaut-remediationrequest.md: a per-fingerprint Lease lock, an uncached List
// by fingerprint, then a create under a random name, or a repeat recorded with retry-on-conflict;
// AlreadyExists on create counts as success under the name it sent. Tests and benchmarks use it
// to say, measured, what an unmodified Kubernaut gets with rrguard installed.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	mathrand "math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/test/testenv"
)

// Outcome is what Gateway believes happened to one signal.
type Outcome struct {
	// Name is the RR Gateway reports for the signal: its audit correlation ID.
	Name string
	// Created: Gateway believes it created the RR (true also for AlreadyExists, which it takes as
	// success under the name it sent).
	Created bool
	// Recorded: a repeat was written to status.deduplication.
	Recorded bool
	// Swallowed409: the create got AlreadyExists, taken as success, nothing recorded.
	Swallowed409 bool
}

// ErrLockTimeout is Gateway's answer when the lock stays contended for 10 tries.
var ErrLockTimeout = errors.New("lease lock not acquired after 10 tries")

// Gateway is one Gateway pod.
type Gateway struct {
	Client    client.Client // uncached, as Gateway's dedup reads are
	Namespace string
	Pod       string // lock holder identity
	// NoLock skips the Lease lock: Kubernaut's dedup without it (list, then create).
	NoLock bool
	// ReadDetails is the first change docs/kubernaut.md proposes: on AlreadyExists, record the
	// repeat on the RR the 409 names (details.name) instead of taking it as success.
	ReadDetails bool
	// ConflictTries is the second: the status write's tries on conflict (0: client-go's
	// retry.DefaultRetry, 5 tries, as Gateway has today).
	ConflictTries int
}

// Signal handles one signal of fingerprint fp as Gateway does today.
func (g Gateway) Signal(ctx context.Context, fp string) (Outcome, error) {
	if g.NoLock {
		return g.listThenCreate(ctx, fp)
	}
	name := "gw-lock-" + fp[:16]
	backoff := 100 * time.Millisecond
	for try := 0; ; try++ {
		ok, err := g.acquire(ctx, name)
		if err != nil {
			return Outcome{}, err
		}
		if ok {
			break
		}
		if try == 9 {
			return Outcome{}, ErrLockTimeout
		}
		jitter := 1 + (mathrand.Float64()*0.2 - 0.1)
		t := time.NewTimer(time.Duration(float64(backoff) * jitter))
		select {
		case <-ctx.Done():
			t.Stop()
			return Outcome{}, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
		if inflight, err := g.findInFlight(ctx, fp); err != nil {
			return Outcome{}, err
		} else if inflight != nil {
			return Outcome{Name: inflight.Name, Recorded: true}, g.recordRepeat(ctx, inflight)
		}
	}
	defer g.release(ctx, name)
	return g.listThenCreate(ctx, fp)
}

func (g Gateway) listThenCreate(ctx context.Context, fp string) (Outcome, error) {
	inflight, err := g.findInFlight(ctx, fp)
	if err != nil {
		return Outcome{}, err
	}
	if inflight != nil {
		return Outcome{Name: inflight.Name, Recorded: true}, g.recordRepeat(ctx, inflight)
	}
	rr := testenv.NewRR(g.Namespace, fp)
	rr.GenerateName, rr.Name = "", "rr-"+fp[:12]+"-"+randHex(4)
	sent := rr.Name
	err = g.Client.Create(ctx, rr)
	if apierrors.IsAlreadyExists(err) && g.ReadDetails {
		var st apierrors.APIStatus
		if errors.As(err, &st) && st.Status().Details != nil && st.Status().Details.Name != "" {
			held := &v1alpha1.RemediationRequest{ObjectMeta: metav1.ObjectMeta{Namespace: g.Namespace, Name: st.Status().Details.Name}}
			return Outcome{Name: held.Name, Recorded: true}, g.recordRepeat(ctx, held)
		}
	}
	if apierrors.IsAlreadyExists(err) {
		return Outcome{Name: sent, Created: true, Swallowed409: true}, nil
	}
	if err != nil {
		return Outcome{}, err
	}
	return Outcome{Name: rr.Name, Created: true}, nil
}

func (g Gateway) findInFlight(ctx context.Context, fp string) (*v1alpha1.RemediationRequest, error) {
	var list v1alpha1.RemediationRequestList
	if err := g.Client.List(ctx, &list, client.InNamespace(g.Namespace), client.MatchingFields{testenv.FingerprintField: fp}); err != nil {
		return nil, err
	}
	now := time.Now()
	for i := range list.Items {
		if kubernaut.InFlight(&list.Items[i], now) {
			return &list.Items[i], nil
		}
	}
	return nil, nil
}

// recordRepeat bumps status.deduplication with client-go's default retry on conflict (5 tries),
// as Gateway does, or ConflictTries; an RR with no count yet holds its first signal.
func (g Gateway) recordRepeat(ctx context.Context, rr *v1alpha1.RemediationRequest) error {
	backoff := retry.DefaultRetry
	if g.ConflictTries > 0 {
		backoff.Steps = g.ConflictTries
	}
	c := g.Client
	return retry.RetryOnConflict(backoff, func() error {
		var cur v1alpha1.RemediationRequest
		if err := c.Get(ctx, client.ObjectKeyFromObject(rr), &cur); err != nil {
			return err
		}
		now := metav1.Now()
		d := cur.Status.Deduplication
		if d == nil {
			d = &v1alpha1.DeduplicationStatus{FirstSeenAt: &now, OccurrenceCount: 1}
		}
		d.OccurrenceCount++
		d.LastSeenAt = &now
		cur.Status.Deduplication = d
		return c.Status().Update(ctx, &cur)
	})
}

// acquire takes the Lease: GET; NotFound: CREATE (AlreadyExists is contention); held by this pod:
// proceed (re-entrant per pod); expired: UPDATE to take over (Conflict is contention).
func (g Gateway) acquire(ctx context.Context, name string) (bool, error) {
	var l coordinationv1.Lease
	err := g.Client.Get(ctx, client.ObjectKey{Namespace: g.Namespace, Name: name}, &l)
	now := metav1.NewMicroTime(time.Now())
	duration := int32(30)
	pod := g.Pod
	switch {
	case apierrors.IsNotFound(err):
		l = coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: g.Namespace, Name: name},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &pod, LeaseDurationSeconds: &duration, AcquireTime: &now, RenewTime: &now},
		}
		err := g.Client.Create(ctx, &l)
		if apierrors.IsAlreadyExists(err) {
			return false, nil
		}
		return err == nil, err
	case err != nil:
		return false, err
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == pod {
		return true, nil
	}
	if l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
		time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
		l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime = &pod, &now, &now
		err := g.Client.Update(ctx, &l)
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	}
	return false, nil
}

func (g Gateway) release(ctx context.Context, name string) {
	var l coordinationv1.Lease
	if err := g.Client.Get(ctx, client.ObjectKey{Namespace: g.Namespace, Name: name}, &l); err != nil {
		return
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == g.Pod {
		_ = g.Client.Delete(ctx, &l, client.Preconditions{ResourceVersion: &l.ResourceVersion})
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
