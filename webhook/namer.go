package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"gomodules.xyz/jsonpatch/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Namer is the mutating webhook: it gives each new RR the scheme's name, or refuses it as a
// duplicate of the RR in flight.
type Namer struct {
	Lister Lister
	// Marks reads high-water marks as of now; nil reads none (handler tests).
	Marks MarkReader
	// Finalizer, when set, is added to every RR admitted, in the same patch: the controller
	// that releases it raises the mark first (package marks).
	Finalizer string
	// Ready, when set and failing, answers 503: a replica decides only once its marks are seeded.
	Ready func() error
	// AfterRead, when set, runs between a decision's reads and its answer: tests hold a decision
	// there to force interleavings.
	AfterRead func(ctx context.Context, rr *v1alpha1.RemediationRequest)
	Now       func() time.Time // time.Now when nil
}

// MarkReader returns a fingerprint's high-water mark, read as of now.
type MarkReader interface {
	Get(ctx context.Context, namespace, fingerprint string) (int64, error)
}

// candidateChecker is a Lister whose candidates may lag (a cache): the name decided from them is
// confirmed free, or the decision is taken again from consistent reads.
type candidateChecker interface {
	Taken(ctx context.Context, namespace, name string) (bool, error)
	Consistent(ctx context.Context, namespace, fingerprint, reason string) ([]v1alpha1.RemediationRequest, error)
}

var _ admission.Handler = (*Namer)(nil)

// Handle implements admission.Handler.
func (h *Namer) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, decision := h.handle(ctx, req)
	if decision != "" {
		decisions.WithLabelValues(webhookName, decision).Inc()
	}
	duration.WithLabelValues(webhookName).Observe(time.Since(start).Seconds())
	return resp
}

func (h *Namer) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	rr, skip, err := decodeCreate(req)
	if skip {
		return admission.Allowed("not a create"), ""
	}
	if err == nil {
		// Refuse a bad fingerprint before spending an API read on it.
		err = ValidateFingerprint(rr)
	}
	applied := err == nil && appliedCreate(req, rr)
	if err == nil {
		// Reinvoked after another mutating webhook renamed an apply.
		err = checkStoredUnder(req, rr, applied)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}

	if h.Ready != nil {
		if err := h.Ready(); err != nil {
			return deny(apierrors.NewServiceUnavailable("rrguard is not ready to decide: " + err.Error())), DecisionError
		}
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	name, err := h.decide(ctx, rr, now)
	if h.AfterRead != nil {
		h.AfterRead(ctx, rr)
	}
	var unavailable readError
	if errors.As(err, &unavailable) {
		// Not the client's fault, and worth a retry: 503, never a guess.
		return deny(apierrors.NewServiceUnavailable(err.Error())), DecisionError
	}
	if err == nil && applied && rr.Name != name {
		err = applyRefused(rr, name)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}
	if applied {
		// Already the scheme's name, and the key it will be stored under: as unique as a POST.
		return admission.Patched("applied under the scheme's name "+name, h.patch(req.Object.Raw, rr, name, false)...), DecisionCreated
	}
	return admission.Patched("named "+name, h.patch(req.Object.Raw, rr, name, true)...), DecisionCreated
}

// readError is an API read that failed: rrguard cannot decide.
type readError struct{ error }

// decide reads the fingerprint's RRs, then its mark (in that order: an RR that is gone had its
// number covered by the mark before it went), and names the RR or refuses it.
func (h *Namer) decide(ctx context.Context, rr *v1alpha1.RemediationRequest, now func() time.Time) (string, error) {
	ns, fp := rr.Namespace, rr.Spec.SignalFingerprint
	readStart := time.Now()
	defer func() { readDuration.Observe(time.Since(readStart).Seconds()) }()
	existing, err := h.Lister.ListByFingerprint(ctx, ns, fp)
	if err != nil {
		return "", readError{fmt.Errorf("rrguard could not read the RemediationRequests of this fingerprint: %w", err)}
	}
	mark, err := h.mark(ctx, ns, fp)
	if err != nil {
		return "", err
	}
	name, err := Decide(rr, existing, mark, now())
	c, lagging := h.Lister.(candidateChecker)
	if err != nil || !lagging {
		return name, err
	}
	// The candidates came from a cache that may have missed the RR now holding this name (the
	// newest RR may even be gone since, its mark raised after our read): the name must be free.
	taken, err := c.Taken(ctx, ns, name)
	if err != nil {
		return "", readError{fmt.Errorf("rrguard could not confirm the name %s: %w", name, err)}
	}
	if !taken {
		return name, nil
	}
	if existing, err = c.Consistent(ctx, ns, fp, "candidate-taken"); err != nil {
		return "", readError{fmt.Errorf("rrguard could not read the RemediationRequests of this fingerprint: %w", err)}
	}
	if mark, err = h.mark(ctx, ns, fp); err != nil {
		return "", err
	}
	return Decide(rr, existing, mark, now())
}

func (h *Namer) mark(ctx context.Context, ns, fp string) (int64, error) {
	if h.Marks == nil {
		return 0, nil
	}
	mark, err := h.Marks.Get(ctx, ns, fp)
	if err != nil {
		return 0, readError{fmt.Errorf("rrguard could not read the high-water mark of this fingerprint: %w", err)}
	}
	return mark, nil
}

// patch is what an admitted RR gets: the scheme's name and no generateName (rename false for an
// apply, which already carries it), and Finalizer. "add" replaces a member that exists, so it
// serves whether or not the client sent a name.
func (h *Namer) patch(raw []byte, rr *v1alpha1.RemediationRequest, name string, rename bool) []jsonpatch.JsonPatchOperation {
	var probe struct {
		Metadata *struct {
			Finalizers json.RawMessage `json:"finalizers"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(raw, &probe) // decodeCreate already decoded raw
	finalize := h.Finalizer != "" && !slices.Contains(rr.Finalizers, h.Finalizer)
	if probe.Metadata == nil {
		meta := map[string]any{"name": name}
		if finalize {
			meta["finalizers"] = []string{h.Finalizer}
		}
		return []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata", Value: meta}}
	}
	var ops []jsonpatch.JsonPatchOperation
	if rename {
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/name", Value: name})
		if rr.GenerateName != "" {
			ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "remove", Path: "/metadata/generateName"})
		}
	}
	switch {
	case !finalize:
	case len(probe.Metadata.Finalizers) > 0 && string(probe.Metadata.Finalizers) != "null":
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/finalizers/-", Value: h.Finalizer})
	default:
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/finalizers", Value: []string{h.Finalizer}})
	}
	return ops
}
