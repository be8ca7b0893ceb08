package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rrfacts"
	"github.com/rrguard/rrguard/webhook/decision"
)

// Namer is the mutating webhook: it gives each new RR the scheme's name, or refuses it as a
// duplicate of the RR in flight.
type Namer struct {
	// Lister reads a fingerprint's RRs consistently (APILister).
	Lister Lister
	// Index, when set, answers from rrguard's watch of RRs where a lagging answer is safe (see
	// decide); nil decides every create from consistent reads.
	Index Index
	// Marks reads high-water marks as of now; nil reads none (handler tests).
	Marks MarkReader
	// Finalizer, when set, is added to every RR admitted, in the same patch: the controller
	// that releases it raises the mark first (package marks).
	Finalizer string
	// Judged, when set, says whether rrguard judges RRs in a namespace; creates elsewhere are
	// refused (rrguard could neither decide them from its index nor release its finalizer).
	Judged func(namespace string) bool
	// Ready, when set and failing, answers 503: a replica decides only once its marks are seeded.
	Ready func() error
	Now   func() time.Time // time.Now when nil
}

// Index is rrguard's watch of RRs (package rrfacts): the facts of a fingerprint's RRs, or an
// *rrfacts.Untrusted error when it cannot vouch for them.
type Index interface {
	Lookup(namespace, fingerprint string, now time.Time) ([]decision.Fact, error)
	// MayBeMarked is false only for a fingerprint that surely has no high-water mark.
	MayBeMarked(namespace, fingerprint string) bool
	// AwaitFresh waits, up to max, for an index that was not fresh to become so (see rrfacts).
	AwaitFresh(ctx context.Context, namespace string, max time.Duration) bool
}

// freshWait is how long a decision waits for the index to prove itself fresh again after a quiet
// spell, rather than reading the API server.
const freshWait = time.Second

// MarkReader returns a fingerprint's high-water mark, read as of now.
type MarkReader interface {
	Get(ctx context.Context, namespace, fingerprint string) (int64, error)
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

	if h.Judged != nil && !h.Judged(rr.Namespace) {
		return deny(notJudged(rr.Namespace)), DecisionInvalid
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

// decide names the RR or refuses it, reading from the API server only where the index's answer
// could be wrong in a way that matters (argued in docs/design.md, "Reads"):
//
//   - the index shows an RR of the fingerprint in flight: refuse, no read. A stale "in flight"
//     only refuses a create, which stores nothing; the creator finds the RR finished and retries.
//   - the index shows no RR of the fingerprint: name 1 + mark, the mark read only when the
//     fingerprint may have one (a new fingerprint has none: no read). An RR the index has not
//     seen yet is recent, holds the name chosen (the API server refuses the collision), and
//     cannot be released before this create commits.
//   - the index shows RRs, none in flight: a consistent List and the mark, as without an index
//     (an RR the index shows finished may have been reopened).
//   - the index cannot vouch for itself (not synced, not fresh): a consistent List and the mark.
//
// The mark is read after the RRs: an RR that is gone had its number covered by the mark before
// it went.
func (h *Namer) decide(ctx context.Context, rr *v1alpha1.RemediationRequest, now func() time.Time) (string, error) {
	ns, fp := rr.Namespace, rr.Spec.SignalFingerprint
	reads := 0
	readStart := time.Now()
	defer func() {
		decisionReads.Observe(float64(reads))
		if reads > 0 {
			readDuration.Observe(time.Since(readStart).Seconds())
		}
	}()
	if h.Index != nil {
		facts, err := h.Index.Lookup(ns, fp, now())
		var untrusted *rrfacts.Untrusted
		if errors.As(err, &untrusted) && untrusted.Reason == rrfacts.ReasonNotFresh && h.Index.AwaitFresh(ctx, ns, freshWait) {
			facts, err = h.Index.Lookup(ns, fp, now())
		}
		switch {
		case errors.As(err, &untrusted):
			fallbacks.WithLabelValues(untrusted.Reason).Inc()
		case err != nil:
			return "", readError{err}
		default:
			t := now()
			if slices.ContainsFunc(facts, func(f decision.Fact) bool { return f.InFlight(t) }) {
				return decideFacts(rr, facts, 0, t)
			}
			if len(facts) == 0 {
				if !h.Index.MayBeMarked(ns, fp) {
					return decideFacts(rr, nil, 0, now())
				}
				reads++
				mark, err := h.mark(ctx, ns, fp)
				if err != nil {
					return "", err
				}
				return decideFacts(rr, nil, mark, now())
			}
		}
	}
	reads++
	existing, err := h.Lister.ListByFingerprint(ctx, ns, fp)
	if err != nil {
		return "", readError{fmt.Errorf("rrguard could not read the RemediationRequests of this fingerprint: %w", err)}
	}
	if h.Marks != nil {
		reads++
	}
	mark, err := h.mark(ctx, ns, fp)
	if err != nil {
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
