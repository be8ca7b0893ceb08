package webhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rrfacts"
)

// Namer is the mutating webhook: it gives each new object of its policy's target the name its key
// takes now, or refuses it as a duplicate of the object in flight.
type Namer struct {
	// Policy is what the Namer enforces: the target, the key, the in-flight rule, the names.
	Policy *policy.Compiled
	// Lister reads a key's objects consistently (rrfacts.Index.ReadKey).
	Lister Lister
	// Index, when set, answers from rrguard's watch of the target where a lagging answer is safe
	// (see decide); nil decides every create from consistent reads.
	Index Index
	// Marks reads high-water marks as of now; nil reads none (handler tests).
	Marks MarkReader
	// Finalizer, when set, is added to every RR admitted, in the same patch: the controller
	// that releases it raises the mark first (package marks).
	Finalizer string
	// Judged, when set, says whether rrguard judges RRs in a namespace; creates elsewhere are
	// refused (rrguard could neither decide them from its index nor release its finalizer).
	Judged func(namespace string) bool
	// LeaveAlone, when set and true for a namespace, lets its creates through untouched: the
	// namespaces no policy may judge (policy.NeverJudgedNamespace).
	LeaveAlone func(namespace string) bool
	// Ready, when set and failing, answers 503: a replica decides only once its marks are seeded.
	Ready func() error
	Now   func() time.Time // time.Now when nil

	treeOnce sync.Once
	tree     *jsonproject.Tree // what a create is decoded along
}

// Lister reads, as of now, the facts of the objects of one key in one namespace.
type Lister interface {
	ReadKey(ctx context.Context, namespace, keyHex, key string) ([]decision.Fact, error)
}

// Index is rrguard's watch of the target (package rrfacts): the facts of a key's objects, or an
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
		decisions.WithLabelValues(webhookName, decision, policyOf(h.Policy)).Inc()
	}
	duration.WithLabelValues(webhookName, policyOf(h.Policy)).Observe(time.Since(start).Seconds())
	return resp
}

func (h *Namer) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if h.Policy == nil {
		return deny(errNoPolicy), DecisionError
	}
	h.treeOnce.Do(func() { h.tree = h.Policy.Reads().Merge(createReads) })
	c, skip, err := decodeCreate(ctx, req, h.Policy, h.tree)
	if skip {
		if c != nil && c.keyless {
			keyless.WithLabelValues(h.Policy.Policy).Inc()
			return admission.Allowed("left alone: the object has no key under policy " + h.Policy.Policy), DecisionAllowed
		}
		if c != nil {
			return admission.Allowed("left alone: a match condition of policy " + h.Policy.Policy + " is false"), DecisionAllowed
		}
		return admission.Allowed("not a create"), ""
	}
	applied := err == nil && appliedCreate(req, c)
	if err == nil {
		// Reinvoked after another mutating webhook renamed an apply.
		err = checkStoredUnder(req, c, applied)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}

	if h.LeaveAlone != nil && h.LeaveAlone(c.Namespace) {
		return admission.Allowed("rrguard never judges namespace " + c.Namespace), DecisionAllowed
	}
	if h.Judged != nil && !h.Judged(c.Namespace) {
		return deny(notJudged(c, h.Policy)), DecisionInvalid
	}
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	if !h.Policy.Names() {
		// A hold reads nothing and names nothing: it needs no seeded marks.
		return h.hold(ctx, c, now())
	}
	if h.Ready != nil {
		if err := h.Ready(); err != nil {
			return deny(apierrors.NewServiceUnavailable("rrguard is not ready to decide: " + err.Error())), DecisionError
		}
	}
	name, err := h.decide(ctx, c, now)
	var unavailable readError
	if errors.As(err, &unavailable) {
		// Not the client's fault, and worth a retry: 503, never a guess.
		return deny(apierrors.NewServiceUnavailable(err.Error())), DecisionError
	}
	if err == nil && applied && c.Name != name {
		err = applyRefused(c, name)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}
	if applied {
		// Already the scheme's name, and the key it will be stored under: as unique as a POST.
		return admission.Patched("applied under the scheme's name "+name, h.patch(c, name, false)...), DecisionCreated
	}
	return admission.Patched("named "+name, h.patch(c, name, true)...), DecisionCreated
}

var errNoPolicy = apierrors.NewInternalError(errors.New("rrguard is misconfigured: a webhook without a policy"))

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
func (h *Namer) decide(ctx context.Context, c *created, now func() time.Time) (string, error) {
	ns, fp := c.Namespace, c.keyHex
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
			if slices.ContainsFunc(facts, func(f decision.Fact) bool { return f.Blocks(t) }) {
				return decideFacts(h.Policy, c, facts, 0, t)
			}
			if len(facts) == 0 {
				if !h.Index.MayBeMarked(ns, fp) {
					return decideFacts(h.Policy, c, nil, 0, now())
				}
				reads++
				mark, err := h.mark(ctx, ns, fp)
				if err != nil {
					return "", err
				}
				return decideFacts(h.Policy, c, nil, mark, now())
			}
		}
	}
	reads++
	existing, err := h.Lister.ReadKey(ctx, ns, fp, c.key)
	if err != nil {
		return "", readError{fmt.Errorf("rrguard could not read the %s of this key: %w", h.Policy.GroupResource, err)}
	}
	if h.Marks != nil {
		reads++
	}
	mark, err := h.mark(ctx, ns, fp)
	if err != nil {
		return "", err
	}
	return decideFacts(h.Policy, c, existing, mark, now())
}

func (h *Namer) mark(ctx context.Context, ns, fp string) (int64, error) {
	if h.Marks == nil {
		return 0, nil
	}
	mark, err := h.Marks.Get(ctx, ns, fp)
	if err != nil {
		return 0, readError{fmt.Errorf("rrguard could not read the high-water mark of this key: %w", err)}
	}
	return mark, nil
}

// patch is what an admitted object gets: the name and no generateName (rename false for an
// apply, which already carries it), and Finalizer: a JSON patch of one to three operations, never
// a re-encode of the object. "add" replaces a member that exists, so it serves whether or not the
// client sent a name.
func (h *Namer) patch(c *created, name string, rename bool) []jsonpatch.JsonPatchOperation {
	finalize := h.Finalizer != "" && !slices.Contains(c.Finalizers, h.Finalizer)
	if !c.hasMetadata {
		meta := map[string]any{"name": name}
		if finalize {
			meta["finalizers"] = []string{h.Finalizer}
		}
		return []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata", Value: meta}}
	}
	var ops []jsonpatch.JsonPatchOperation
	if rename {
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/name", Value: name})
		if c.GenerateName != "" {
			ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "remove", Path: "/metadata/generateName"})
		}
	}
	switch {
	case !finalize:
	case len(c.Finalizers) > 0:
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/finalizers/-", Value: h.Finalizer})
	default:
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/finalizers", Value: []string{h.Finalizer}})
	}
	return ops
}

// hold admits a create of a Queue or Replace policy: stored under its creator's name, held, with
// the annotations that place it in its key's queue (policy.HoldPatch). No read: the order is the
// admission instant, and the release is the controller's (package queue). A create its creator
// held already is the creator's, left alone.
func (h *Namer) hold(ctx context.Context, c *created, now time.Time) (admission.Response, string) {
	userHeld, err := h.Policy.UserHeld(ctx, c.fields)
	if err != nil {
		return deny(invalidObject(h.Policy, c, err)), DecisionInvalid
	}
	if userHeld {
		return admission.Allowed("left alone: created held by its creator, who releases it"), DecisionAllowed
	}
	a := policy.Admission{Key: c.key, Queued: now, Behind: h.behind(c, now)}
	return admission.Patched("held by policy "+h.Policy.Policy, h.Policy.HoldPatch(c.fields, a)...), DecisionHeld
}

// behind is the newest object of c's key ahead of it, in flight or held, as the index shows it
// ("" when the index cannot vouch for itself or shows none): informative only, nothing depends on it.
func (h *Namer) behind(c *created, now time.Time) string {
	if h.Index == nil {
		return ""
	}
	facts, err := h.Index.Lookup(c.Namespace, c.keyHex, now)
	if err != nil {
		return ""
	}
	var ahead []decision.Fact
	for _, f := range facts {
		if f.Blocks(now) {
			ahead = append(ahead, f)
		}
	}
	decision.Order(ahead)
	if len(ahead) == 0 {
		return ""
	}
	return ahead[len(ahead)-1].Name
}
