package testenv

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/webhook"
)

// HeldBack is a view of a cache of RRs that can be held at an instant: while held, List answers
// with what the cache held then, as if every later watch event were delayed; Get and everything
// else pass through. It makes a real cache lag on purpose, for tests of what a lagging cache may
// decide.
type HeldBack struct {
	client.Reader
	mu   sync.Mutex
	held []v1alpha1.RemediationRequest
	on   bool
}

// Hold freezes the view at what the cache holds now.
func (h *HeldBack) Hold(ctx context.Context) error {
	var list v1alpha1.RemediationRequestList
	if err := h.Reader.List(ctx, &list); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held, h.on = list.Items, true
	return nil
}

// Release lets the view follow the cache again.
func (h *HeldBack) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held, h.on = nil, false
}

// List implements client.Reader: RRs by namespace and fingerprint field, as the decision lists.
func (h *HeldBack) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	h.mu.Lock()
	on, held := h.on, h.held
	h.mu.Unlock()
	rrs, ok := list.(*v1alpha1.RemediationRequestList)
	if !on || !ok {
		return h.Reader.List(ctx, list, opts...)
	}
	lo := (&client.ListOptions{}).ApplyOptions(opts)
	sel := lo.FieldSelector
	if sel == nil {
		sel = fields.Everything()
	}
	rrs.Items = nil
	for _, rr := range held {
		if lo.Namespace != "" && rr.Namespace != lo.Namespace {
			continue
		}
		if !sel.Matches(fields.Set{webhook.FingerprintField: rr.Spec.SignalFingerprint}) {
			continue
		}
		rrs.Items = append(rrs.Items, *rr.DeepCopy())
	}
	return nil
}

// Counter reads a counter of rrguard's metrics registry (controller-runtime's) in this process.
func Counter(name string, labels map[string]string) (float64, error) {
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			return m.GetCounter().GetValue(), nil
		}
		return 0, nil
	}
	// A vector with no child yet is not gathered at all.
	return 0, nil
}
