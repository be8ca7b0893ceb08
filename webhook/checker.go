package webhook

import (
	"context"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/policy"
)

// Checker is the validating webhook: after every mutating webhook has run (one may have renamed
// the object after rrguard did), the stored name must still be the scheme's for its key, or
// uniqueness is lost. It needs no API read.
type Checker struct {
	Policy *policy.Compiled
	// LeaveAlone is the Namer's: creates in those namespaces were not named, so they are not checked.
	LeaveAlone func(namespace string) bool

	treeOnce sync.Once
	tree     *jsonproject.Tree
}

var _ admission.Handler = (*Checker)(nil)

// Handle implements admission.Handler.
func (h *Checker) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	defer func() {
		duration.WithLabelValues(webhookCheck, policyOf(h.Policy)).Observe(time.Since(start).Seconds())
	}()

	if h.Policy == nil {
		return deny(errNoPolicy)
	}
	h.treeOnce.Do(func() { h.tree = h.Policy.Reads().Merge(createReads) })
	c, skip, err := decodeCreate(ctx, req, h.Policy, h.tree)
	if skip || (err == nil && h.LeaveAlone != nil && h.LeaveAlone(c.Namespace)) {
		return admission.Allowed("not judged")
	}
	if err == nil {
		err = checkStoredUnder(req, c, appliedCreate(req, c))
	}
	if err == nil {
		if _, ok := h.Policy.Occurrence(c.keyHex, c.Name); !ok {
			err = apierrors.NewInvalid(c.kind, c.Name, field.ErrorList{field.Invalid(namePath, c.Name, fmt.Sprintf(
				"must be %s<first 32 characters of the key's hex form>-<n>, as rrguard's mutating webhook sets it; another mutating webhook may have changed it",
				h.Policy.NamePrefix()))})
		}
	}
	if err != nil {
		decisions.WithLabelValues(webhookCheck, decisionOf(err), policyOf(h.Policy)).Inc()
		return deny(err)
	}
	decisions.WithLabelValues(webhookCheck, DecisionAllowed, policyOf(h.Policy)).Inc()
	return admission.Allowed("")
}
