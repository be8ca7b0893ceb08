package webhook

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
)

// CachedLister answers from an informer cache indexed by fingerprint, and makes the answer
// exact with consistent GETs by name, so that admission cost does not grow with the number of
// RRs in the namespace. It never trusts the cache for a "no": what the decision rests on is read
// from the API server.
//
//   - The cache's newest RR of the fingerprint (highest n) is re-read by name: its phase decides
//     whether a new RR may start.
//   - The name decided is then confirmed free by the Namer (Taken): taken means the cache is
//     behind, and a consistent List decides.
//   - Any other RR the cache holds as in flight is re-read, so a stale phase never refuses a create.
//   - Cache not synced, or the newest RR gone: a consistent List decides (APILister).
type CachedLister struct {
	Cache  client.Reader // cached client with the FingerprintField index
	API    client.Reader // the manager's APIReader: consistent reads
	Synced func() bool   // whether the cache has synced; nil means always
}

var fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "rrguard_consistent_list_fallbacks_total",
	Help: "Decisions that fell back from the cache to a consistent List, by reason.",
}, []string{"reason"})

func init() { metrics.Registry.MustRegister(fallbacks) }

// ListByFingerprint implements Lister.
func (l CachedLister) ListByFingerprint(ctx context.Context, namespace, fp string) ([]v1alpha1.RemediationRequest, error) {
	if l.Synced != nil && !l.Synced() {
		return l.fallback(ctx, "cache-not-synced", namespace, fp)
	}
	var cached v1alpha1.RemediationRequestList
	if err := l.Cache.List(ctx, &cached, client.InNamespace(namespace), client.MatchingFields{FingerprintField: fp}); err != nil {
		return l.fallback(ctx, "cache-error", namespace, fp)
	}
	now := time.Now()
	var newest int64
	for i := range cached.Items {
		if n, ok := rules.Occurrence(fp, cached.Items[i].Name); ok && n > newest {
			newest = n
		}
	}

	var out []v1alpha1.RemediationRequest
	if newest > 0 {
		rr, err := l.get(ctx, namespace, rules.Name(fp, newest))
		switch {
		case apierrors.IsNotFound(err):
			// Deleted since the cache saw it: numbering needs what is really there.
			return l.fallback(ctx, "newest-deleted", namespace, fp)
		case err != nil:
			return nil, err
		}
		out = append(out, *rr)
	}
	for i := range cached.Items {
		c := &cached.Items[i]
		if n, _ := rules.Occurrence(fp, c.Name); (newest > 0 && n == newest) || !rules.InFlight(c, now) {
			continue
		}
		rr, err := l.get(ctx, namespace, c.Name)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, err
		}
		out = append(out, *rr)
	}
	return out, nil
}

// Taken reports whether an RR of this name exists now: the Namer confirms that the name it
// decided from the cache is free (the cache may have missed the RR holding it).
func (l CachedLister) Taken(ctx context.Context, namespace, name string) (bool, error) {
	_, err := l.get(ctx, namespace, name)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// Consistent lists the fingerprint's RRs from the API server, counting the fallback by reason.
func (l CachedLister) Consistent(ctx context.Context, namespace, fp, reason string) ([]v1alpha1.RemediationRequest, error) {
	return l.fallback(ctx, reason, namespace, fp)
}

func (l CachedLister) get(ctx context.Context, namespace, name string) (*v1alpha1.RemediationRequest, error) {
	var rr v1alpha1.RemediationRequest
	// A GET without a resourceVersion is served as of now, never from a lagging cache.
	err := l.API.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &rr)
	return &rr, err
}

func (l CachedLister) fallback(ctx context.Context, reason, namespace, fp string) ([]v1alpha1.RemediationRequest, error) {
	fallbacks.WithLabelValues(reason).Inc()
	return APILister{Reader: l.API}.ListByFingerprint(ctx, namespace, fp)
}

// IndexFingerprint is the cache index CachedLister reads.
func IndexFingerprint(o client.Object) []string {
	rr, ok := o.(*v1alpha1.RemediationRequest)
	if !ok {
		return nil
	}
	return []string{rr.Spec.SignalFingerprint}
}

// SlimForCache drops what the decision never reads, to keep a cache of every RR small: managed
// fields and the signal's payload, labels and annotations.
func SlimForCache(obj any) (any, error) {
	if rr, ok := obj.(*v1alpha1.RemediationRequest); ok {
		rr.ManagedFields = nil
		rr.Spec.OriginalPayload, rr.Spec.ProviderData = "", ""
		rr.Spec.SignalLabels, rr.Spec.SignalAnnotations = nil, nil
	}
	return obj, nil
}
