package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook"
)

// A mode handles one signal the way one kind of creator does, and says whether it stored a new RR.
type mode struct {
	name string
	// webhook: whether rrguard is in the path (the namespace is labelled for it).
	webhook bool
	signal  func(ctx context.Context, c client.Client, ns, fp, pod string) (created bool, err error)
}

var modes = []mode{
	{name: "baseline", signal: createOnly},
	{name: "rrguard", webhook: true, signal: createOnly},
	{name: "lease-lock", signal: leaseLocked},
	{name: "list-create", signal: listThenCreate},
}

// createOnly is a plain create: the baseline without a webhook, and rrguard's whole client side
// (a 409 is the duplicate answer, naming the RR in flight).
func createOnly(ctx context.Context, c client.Client, ns, fp, _ string) (bool, error) {
	err := c.Create(ctx, testenv.NewRR(ns, fp))
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

// listThenCreate is Kubernaut's dedup without its lock: list (uncached) by field selector, then
// create or record the repeat.
func listThenCreate(ctx context.Context, c client.Client, ns, fp, _ string) (bool, error) {
	inflight, err := findInFlight(ctx, c, ns, fp)
	if err != nil {
		return false, err
	}
	if inflight != nil {
		return false, recordRepeat(ctx, c, inflight)
	}
	err = c.Create(ctx, testenv.NewRR(ns, fp))
	if apierrors.IsAlreadyExists(err) {
		return false, nil // Gateway treats AlreadyExists as success
	}
	return err == nil, err
}

func findInFlight(ctx context.Context, c client.Client, ns, fp string) (*v1alpha1.RemediationRequest, error) {
	var list v1alpha1.RemediationRequestList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{webhook.FingerprintField: fp}); err != nil {
		return nil, err
	}
	now := time.Now()
	for i := range list.Items {
		if rules.InFlight(&list.Items[i], now) {
			return &list.Items[i], nil
		}
	}
	return nil, nil
}

// recordRepeat bumps status.deduplication with retry on conflict, as Gateway does.
func recordRepeat(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
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

var errLockTimeout = errors.New("lease lock not acquired after 10 tries")

// leaseLocked is Kubernaut's current Gateway, emulated from the shared facts: a per-fingerprint
// Lease gw-lock-<fp[:16]> (holder = pod name, 30 s), acquired with up to 10 tries and backoff
// 100 ms doubling to 1 s with ±10% jitter, re-checking for an RR after each failed try; then an
// uncached list, create or record; then release.
func leaseLocked(ctx context.Context, c client.Client, ns, fp, pod string) (bool, error) {
	name := "gw-lock-" + fp[:16]
	backoff := 100 * time.Millisecond
	for try := 0; ; try++ {
		ok, err := acquire(ctx, c, ns, name, pod)
		if err != nil {
			return false, err
		}
		if ok {
			break
		}
		if try == 9 {
			return false, errLockTimeout
		}
		jitter := 1 + (rand.Float64()*0.2 - 0.1)
		time.Sleep(time.Duration(float64(backoff) * jitter))
		backoff = min(2*backoff, time.Second)
		if inflight, err := findInFlight(ctx, c, ns, fp); err != nil {
			return false, err
		} else if inflight != nil {
			return false, recordRepeat(ctx, c, inflight)
		}
	}
	defer release(ctx, c, ns, name, pod)
	return listThenCreate(ctx, c, ns, fp, pod)
}

func acquire(ctx context.Context, c client.Client, ns, name, pod string) (bool, error) {
	var l coordinationv1.Lease
	err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &l)
	now := metav1.NewMicroTime(time.Now())
	duration := int32(30)
	switch {
	case apierrors.IsNotFound(err):
		l = coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &pod, LeaseDurationSeconds: &duration, AcquireTime: &now, RenewTime: &now},
		}
		err := c.Create(ctx, &l)
		if apierrors.IsAlreadyExists(err) {
			return false, nil
		}
		return err == nil, err
	case err != nil:
		return false, err
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == pod {
		return true, nil // re-entrant per pod
	}
	if l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
		time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
		l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime = &pod, &now, &now
		err := c.Update(ctx, &l)
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	}
	return false, nil
}

func release(ctx context.Context, c client.Client, ns, name, pod string) {
	var l coordinationv1.Lease
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &l); err != nil {
		return
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == pod {
		_ = c.Delete(ctx, &l, client.Preconditions{ResourceVersion: &l.ResourceVersion})
	}
}
