package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
)

// What a Queue or Replace policy writes on the objects it admits: the whole of a queue's state
// (which objects rrguard holds, their order, what it cancelled) lives in these annotations and
// the objects' own fields, so any replica, or all of them restarted, carries on from the objects.
const (
	// AnnotationPolicy names the policy that admitted the object; it stays for the object's life.
	AnnotationPolicy = "rrguard.kubernaut.ai/policy"
	// AnnotationKey is the object's key, as the key expression gave it (for kubectl and users).
	AnnotationKey = "rrguard.kubernaut.ai/key"
	// AnnotationQueued is the instant rrguard admitted the object (RFC 3339, nanoseconds): the
	// queue's order, the object's name breaking ties.
	AnnotationQueued = "rrguard.kubernaut.ai/queued"
	// AnnotationHeld is present while rrguard holds the object; its release removes it, in the
	// same patch that lets the object run, and tests it first, so an object is released once.
	AnnotationHeld = "rrguard.kubernaut.ai/held"
	// AnnotationBehind names, at admission, the newest object of the key ahead of this one (in
	// flight or held) as rrguard's index saw it: what it waits behind. Written once, with the
	// hold; a key's queue only moves forward, so it stays true.
	AnnotationBehind = "rrguard.kubernaut.ai/queued-behind"
	// AnnotationCancelled is when rrguard cancelled the object (Replace), written with the cancel.
	AnnotationCancelled = "rrguard.kubernaut.ai/cancelled"
)

// heldValue is AnnotationHeld's value: what a release tests.
const heldValue = "true"

var ownAnnotations = []string{AnnotationPolicy, AnnotationKey, AnnotationQueued, AnnotationHeld, AnnotationBehind, AnnotationCancelled}

// annotationPath is the JSON pointer of annotation a (RFC 6901 escapes "/" as "~1").
func annotationPath(a string) string {
	return "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(a, "~", "~0"), "/", "~1")
}

// concurrency is a policy's spec.concurrency, compiled.
type concurrency struct {
	rule                               decision.Rule
	hold, release                      []jsonpatch.JsonPatchOperation
	cancel, cancelHeld                 []jsonpatch.JsonPatchOperation
	cancelByDelete, cancelHeldByDelete bool
	stallAfter                         time.Duration
}

// DefaultStallAfter is spec.concurrency.stallAfter's default.
const DefaultStallAfter = time.Hour

// StallAfter is how long a key's queue may go without a release before it counts as stalled.
func (c *Compiled) StallAfter() time.Duration { return c.conc.stallAfter }

// Mode is what a create of a key with one in flight gets.
func (c *Compiled) Mode() decision.Mode { return c.conc.rule.Mode }

// Rule is how the key's held objects are released; Settle is the caller's (the API server's
// request bound).
func (c *Compiled) Rule(settle time.Duration) decision.Rule {
	r := c.conc.rule
	r.Settle = settle
	if r.Mode == decision.Forbid {
		// Draining what an earlier Queue or Replace held: one at a time.
		r.Mode, r.MaxInFlight = decision.Queue, 1
	}
	return r
}

// Names: the policy names objects by their key (Forbid); Queue and Replace keep the creators'
// names, since simultaneous creates of one key must all be stored.
func (c *Compiled) Names() bool { return c.conc.rule.Mode == decision.Forbid }

// CanRelease: the policy says how to release what it held (a Forbid policy may not).
func (c *Compiled) CanRelease() bool { return len(c.conc.release) > 0 }

func compileConcurrency(s *v1alpha1.Concurrency, path *field.Path) (concurrency, field.ErrorList) {
	out := concurrency{rule: decision.Rule{Mode: decision.Forbid, MaxInFlight: 1, WaitForEnd: true}, stallAfter: DefaultStallAfter}
	if s == nil {
		return out, nil
	}
	if s.StallAfter != nil {
		if out.stallAfter = s.StallAfter.Duration; out.stallAfter <= 0 {
			return out, field.ErrorList{field.Invalid(path.Child("stallAfter"), s.StallAfter.Duration.String(), "must be positive")}
		}
	}
	var errs field.ErrorList
	switch s.Mode {
	case "", v1alpha1.Forbid:
	case v1alpha1.Queue, v1alpha1.Replace:
		out.rule.Mode = decision.Mode(s.Mode)
		if len(s.Hold) == 0 {
			errs = append(errs, field.Required(path.Child("hold"), "Queue and Replace hold every create"))
		}
		if len(s.Release) == 0 {
			errs = append(errs, field.Required(path.Child("release"), "Queue and Replace release what they hold"))
		}
	default:
		errs = append(errs, field.NotSupported(path.Child("mode"), s.Mode, []string{string(v1alpha1.Forbid), string(v1alpha1.Queue), string(v1alpha1.Replace)}))
	}
	if s.MaxInFlight < 0 || s.MaxInFlight > maxMaxInFlight {
		errs = append(errs, field.Invalid(path.Child("maxInFlight"), s.MaxInFlight, fmt.Sprintf("must be between 1 and %d", maxMaxInFlight)))
	}
	if s.MaxInFlight > 0 {
		out.rule.MaxInFlight = int(s.MaxInFlight)
	}
	if s.MaxInFlight > 1 && s.Mode == v1alpha1.Replace {
		errs = append(errs, field.Invalid(path.Child("maxInFlight"), s.MaxInFlight, "Replace keeps one in flight"))
	}
	if s.WaitForEnd != nil {
		out.rule.WaitForEnd = *s.WaitForEnd
	}
	var e field.ErrorList
	out.hold, e = patchOps(s.Hold, path.Child("hold"))
	errs = append(errs, e...)
	out.release, e = patchOps(s.Release, path.Child("release"))
	errs = append(errs, e...)
	if s.Mode == v1alpha1.Replace && s.Cancel == nil {
		errs = append(errs, field.Required(path.Child("cancel"), "Replace cancels the older objects"))
	}
	out.cancel, out.cancelByDelete, e = cancelOf(s.Cancel, path.Child("cancel"))
	errs = append(errs, e...)
	out.cancelHeld, out.cancelHeldByDelete = out.cancel, out.cancelByDelete
	if s.CancelHeld != nil {
		out.cancelHeld, out.cancelHeldByDelete, e = cancelOf(s.CancelHeld, path.Child("cancelHeld"))
		errs = append(errs, e...)
	}
	return out, errs
}

// maxMaxInFlight bounds spec.concurrency.maxInFlight as the CRD does.
const maxMaxInFlight = 1000

func cancelOf(c *v1alpha1.Cancel, path *field.Path) ([]jsonpatch.JsonPatchOperation, bool, field.ErrorList) {
	if c == nil {
		return nil, false, nil
	}
	if (len(c.Patch) > 0) == c.Delete {
		return nil, false, field.ErrorList{field.Invalid(path, "", "exactly one of patch and delete")}
	}
	ops, errs := patchOps(c.Patch, path.Child("patch"))
	return ops, c.Delete, errs
}

// patchOps checks a policy's JSON patch: operations rrguard can apply as written, none touching
// what names the object or rrguard's own annotations.
func patchOps(in []v1alpha1.PatchOperation, path *field.Path) ([]jsonpatch.JsonPatchOperation, field.ErrorList) {
	var out []jsonpatch.JsonPatchOperation
	var errs field.ErrorList
	for i, op := range in {
		p := path.Index(i)
		switch op.Op {
		case "add", "replace", "test":
			if op.Value == nil {
				errs = append(errs, field.Required(p.Child("value"), op.Op+" needs a value"))
				continue
			}
		case "remove":
			if op.Value != nil {
				errs = append(errs, field.Invalid(p.Child("value"), string(op.Value.Raw), "remove takes no value"))
				continue
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("op"), op.Op, []string{"add", "remove", "replace", "test"}))
			continue
		}
		if !strings.HasPrefix(op.Path, "/") || strings.HasSuffix(op.Path, "/") {
			errs = append(errs, field.Invalid(p.Child("path"), op.Path, "must be a JSON pointer such as /spec/suspend"))
			continue
		}
		if bad := reservedPath(op.Path); bad != "" {
			errs = append(errs, field.Invalid(p.Child("path"), op.Path, "must not touch "+bad))
			continue
		}
		o := jsonpatch.JsonPatchOperation{Operation: op.Op, Path: op.Path}
		if op.Value != nil {
			var v any
			if err := json.Unmarshal(op.Value.Raw, &v); err != nil {
				errs = append(errs, field.Invalid(p.Child("value"), string(op.Value.Raw), "not JSON: "+err.Error()))
				continue
			}
			o.Value = v
		}
		out = append(out, o)
	}
	return out, errs
}

// reservedPath names what p would touch that no policy's patch may: the object's identity, its
// status (a controller's), or rrguard's annotations.
func reservedPath(p string) string {
	for _, r := range []string{"/metadata/name", "/metadata/generateName", "/metadata/namespace", "/metadata/uid", "/metadata/finalizers", "/status", "/apiVersion", "/kind"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return r
		}
	}
	if p == "/metadata" || p == "/metadata/annotations" {
		return "the annotations rrguard writes"
	}
	for _, a := range ownAnnotations {
		if p == annotationPath(a) {
			return a
		}
	}
	return ""
}

// UserHeld reports whether a create's creator held it already (spec.concurrency.userHeld): it is
// the user's, and rrguard leaves it alone.
func (c *Compiled) UserHeld(ctx context.Context, obj map[string]any) (bool, error) {
	if c.userHeld == nil {
		return false, nil
	}
	v, err := eval(ctx, c.userHeld, obj)
	switch {
	case err != nil && missing(err):
		// The object lacks what the rule reads (no spec at all, say): its creator held nothing.
		return false, nil
	case err != nil:
		return false, &EvalError{Field: "spec.concurrency.userHeld", Err: err}
	}
	b, ok := v.Value().(bool)
	if !ok {
		return false, &EvalError{Field: "spec.concurrency.userHeld", Err: fmt.Errorf("gave %s, not bool", v.Type())}
	}
	return b, nil
}

// Admission is what a held create carries: its key, the instant it was admitted, and what it
// waits behind ("" when unknown).
type Admission struct {
	Key    string
	Queued time.Time
	Behind string
}

// HoldPatch holds a new object: rrguard's annotations (added to those it has, or as the whole
// map when it has none: annotations is false), then the policy's hold. Any of rrguard's
// annotations a create brings (a copy of a stored object) are replaced or removed.
func (c *Compiled) HoldPatch(obj map[string]any, a Admission) []jsonpatch.JsonPatchOperation {
	set := map[string]string{
		AnnotationPolicy: c.Policy,
		AnnotationKey:    a.Key,
		AnnotationQueued: a.Queued.UTC().Format(time.RFC3339Nano),
		AnnotationHeld:   heldValue,
	}
	if a.Behind != "" {
		set[AnnotationBehind] = a.Behind
	}
	var ops []jsonpatch.JsonPatchOperation
	md, _ := obj["metadata"].(map[string]any)
	have, annotated := md["annotations"].(map[string]any)
	switch {
	case md == nil:
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata", Value: map[string]any{"annotations": set}})
	case !annotated:
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: "/metadata/annotations", Value: set})
	default:
		for _, k := range ownAnnotations {
			v, ok := set[k]
			switch {
			case ok:
				ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: annotationPath(k), Value: v})
			case have[k] != nil:
				ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "remove", Path: annotationPath(k)})
			}
		}
	}
	return append(ops, c.conc.hold...)
}

// ReleasePatch releases a held object: it tests that rrguard holds it still (so two replicas
// release it once), removes the hold's annotation and applies the policy's release.
func (c *Compiled) ReleasePatch() Patch {
	return append(c.LiftPatch(), c.conc.release...)
}

// LiftPatch drops rrguard's hold annotation from an object whose hold someone else lifted
// (decision.Fact.Lifted), testing it first: the object is then counted as released, once.
func (c *Compiled) LiftPatch() Patch {
	return Patch{
		{Operation: "test", Path: annotationPath(AnnotationHeld), Value: heldValue},
		{Operation: "remove", Path: annotationPath(AnnotationHeld)},
	}
}

// CancelPatch cancels an object (Replace), held or not, testing that it still is what the plan
// saw; nil with del true when the policy cancels by deletion.
func (c *Compiled) CancelPatch(held bool, at time.Time) (ops Patch, del bool) {
	patch, del := c.conc.cancel, c.conc.cancelByDelete
	test := jsonpatch.JsonPatchOperation{Operation: "test", Path: annotationPath(AnnotationHeld), Value: nil}
	if held {
		patch, del = c.conc.cancelHeld, c.conc.cancelHeldByDelete
		test.Value = heldValue
	}
	if del {
		return nil, true
	}
	return append(Patch{test,
		{Operation: "add", Path: annotationPath(AnnotationCancelled), Value: at.UTC().Format(time.RFC3339)},
	}, patch...), false
}

// Patch is a JSON patch as rrguard's controller sends it. Every operation but remove carries its
// value, null included: a test of null passes only where the member is absent (the API server's
// JSON patch), which is how a cancel tests that rrguard no longer holds an object.
type Patch []jsonpatch.JsonPatchOperation

// MarshalJSON implements json.Marshaler.
func (p Patch) MarshalJSON() ([]byte, error) {
	out := make([]map[string]any, len(p))
	for i, o := range p {
		out[i] = map[string]any{"op": o.Operation, "path": o.Path}
		if o.Operation != "remove" {
			out[i]["value"] = o.Value
		}
	}
	return json.Marshal(out)
}

// queueFacts fills what a Queue or Replace policy put on an object into f.
func queueFacts(obj map[string]any, f *decision.Fact) {
	md, _ := obj["metadata"].(map[string]any)
	as, _ := md["annotations"].(map[string]any)
	if as == nil {
		return
	}
	if s, ok := as[AnnotationQueued].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			f.Queued = t
		}
	}
	if f.Queued.IsZero() {
		return // not admitted by a queue: neither held nor cancelled by rrguard
	}
	f.Held = as[AnnotationHeld] == heldValue
	_, f.Cancelled = as[AnnotationCancelled].(string)
}

// concurrencyReads is the annotations queueFacts reads: none for a policy without
// spec.concurrency, which never held anything.
func concurrencyReads(s *v1alpha1.Concurrency) []string {
	if s == nil {
		return nil
	}
	return []string{AnnotationQueued, AnnotationHeld, AnnotationCancelled}
}
