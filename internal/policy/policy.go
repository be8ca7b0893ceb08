// Package policy compiles a UniquenessPolicy (apis/rrguard/v1alpha1) into what the engine runs:
// its match conditions, key, in-flight rule and phase as CEL programs built with the API server's
// own CEL library and environment (k8s.io/apiserver/pkg/cel/environment, with its cost limits),
// as ValidatingAdmissionPolicy builds its own; and the naming rule for its key (package rules).
//
// A policy that does not compile, whose estimated cost is over budget, or that names a target
// rrguard refuses to judge, is an *Error saying which field and why, and is never enforced.
package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/version"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apiserver/pkg/cel/library"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/rules"
)

// Reasons an *Error gives; a policy's status shows them.
const (
	ReasonInvalid         = "InvalidSpec"
	ReasonCompileError    = "CompileError"
	ReasonOverBudget      = "CostBudgetExceeded"
	ReasonForbiddenTarget = "ForbiddenTarget"
)

// Error is why a policy cannot be enforced.
type Error struct {
	Reason string
	Errs   field.ErrorList
}

func (e *Error) Error() string { return e.Reason + ": " + e.Errs.ToAggregate().Error() }

// ErrForbiddenTarget is wrapped by the *Error of a policy whose target rrguard never judges.
var ErrForbiddenTarget = errors.New("forbidden target")

func (e *Error) Unwrap() error {
	if e.Reason == ReasonForbiddenTarget {
		return ErrForbiddenTarget
	}
	return nil
}

// Compiled is a policy ready to judge objects. It is safe for concurrent use.
type Compiled struct {
	Policy        string // the policy's name
	GroupResource schema.GroupResource
	Versions      []string
	Namespaces    []string
	// NamespacesFrom is where Namespaces was set, for the answer to a create elsewhere:
	// "spec.target.namespaces" unless the installer set them (a built-in policy's flag).
	NamespacesFrom string
	NamesForLife   bool
	// KeyRequired refuses an object whose key is absent; otherwise it is not the policy's
	// (IsKeyAbsent).
	KeyRequired bool
	// NameCheck is who checks a new object's final name (NameCheckPolicy).
	NameCheck v1alpha1.NameCheck
	// Read is how a decision reads the key's objects when the index cannot vouch for itself;
	// LabelKeys are the labels a LabelSelector read requires; KeyField is the field a
	// FieldSelector read selects on (and where a bad key is reported).
	Read      v1alpha1.ConsistentRead
	LabelKeys []string
	KeyField  string

	match          []named
	matchSrc       []v1alpha1.MatchCondition
	keySrc         string
	key            cel.Program
	hex            bool
	prefix         string
	inFlight       cel.Program
	inFlightIsTime bool
	phase          cel.Program
	message, hint  string
	reads          *jsonproject.Tree
	pattern        *labelPattern
	conc           concurrency
	userHeld       cel.Program
}

// Reads is the paths of an object the policy's expressions read (see jsonproject): an object
// decoded along them is judged exactly as the whole object would be. Callers add what they read
// themselves (metadata) to a copy (jsonproject.Tree.Merge), never to it.
func (c *Compiled) Reads() *jsonproject.Tree { return c.reads }

type named struct {
	name string
	prog cel.Program
}

// CompatibilityVersion is the Kubernetes release whose CEL library policies may use: the oldest
// rrguard is tested on, so a policy that compiles here means the same on every supported cluster.
var CompatibilityVersion = version.MajorMinor(1, 32)

// SizeBound is the size rrguard's cost estimate assumes for every list, map and string of an
// object (policies type `object` as dyn, so nothing else bounds them). An expression whose
// estimate at that size exceeds the API server's per-expression limit is refused; a bigger object
// is still judged, with that limit enforced at run time.
const SizeBound = 1024

var envSet = func() *environment.EnvSet {
	s, err := environment.MustBaseEnvSet(CompatibilityVersion).Extend(environment.VersionedOptions{
		IntroducedVersion: version.MajorMinor(1, 0),
		EnvOptions:        []cel.EnvOption{cel.Variable("object", cel.DynType)},
	})
	if err != nil {
		panic(err) // static declarations
	}
	return s
}()

// Compile checks p and builds its programs. judgedNamespace, when set, is rrguard's own
// namespace, which no policy may name.
func Compile(p *v1alpha1.UniquenessPolicy, rrguardNamespace string) (*Compiled, error) {
	spec := field.NewPath("spec")
	t := p.Spec.Target
	c := &Compiled{
		Policy:         p.Name,
		GroupResource:  schema.GroupResource{Group: t.Group, Resource: t.Resource},
		Versions:       t.Versions,
		Namespaces:     t.Namespaces,
		NamespacesFrom: "spec.target.namespaces of policy " + p.Name,
		NamesForLife:   p.Spec.NamesForLife == nil || *p.Spec.NamesForLife,
		KeyRequired:    p.Spec.Key.Required,
		NameCheck:      p.Spec.NameCheck,
		matchSrc:       p.Spec.MatchConditions,
		keySrc:         p.Spec.Key.Expression,
		prefix:         p.Spec.Key.NamePrefix,
		hex:            p.Spec.Key.Encoding == v1alpha1.KeyHex,
		message:        p.Spec.Message,
		hint:           p.Spec.Hint,
	}
	if err := forbidden(t, rrguardNamespace, spec.Child("target")); err != nil {
		return nil, err
	}
	var invalid field.ErrorList
	if len(p.Name) > maxPolicyName {
		invalid = append(invalid, field.TooLong(field.NewPath("metadata", "name"), p.Name, maxPolicyName))
	}
	if len(t.Versions) == 0 {
		invalid = append(invalid, field.Required(spec.Child("target", "versions"), ""))
	}
	if t.Resource == "" || strings.Contains(t.Resource, "/") || t.Resource == "*" {
		invalid = append(invalid, field.Invalid(spec.Child("target", "resource"), t.Resource, "must be one resource, no subresource, no wildcard"))
	}
	if !validPrefix(c.prefix) {
		invalid = append(invalid, field.Invalid(spec.Child("key", "namePrefix"), c.prefix,
			"must start with a lowercase letter, hold only lowercase letters, digits and '-', and be at most 11 characters"))
	}
	if c.NameCheck == "" {
		c.NameCheck = v1alpha1.NameCheckAPIServer
	}
	if nc := c.NameCheck; nc != v1alpha1.NameCheckAPIServer && nc != v1alpha1.NameCheckWebhook {
		invalid = append(invalid, field.NotSupported(spec.Child("nameCheck"), nc, []string{string(v1alpha1.NameCheckAPIServer), string(v1alpha1.NameCheckWebhook)}))
	}
	if e := p.Spec.Key.Encoding; e != "" && e != v1alpha1.KeyHex && e != v1alpha1.KeySHA256 {
		invalid = append(invalid, field.NotSupported(spec.Child("key", "encoding"), e, []string{string(v1alpha1.KeyHex), string(v1alpha1.KeySHA256)}))
	}
	var errs field.ErrorList
	c.conc, errs = compileConcurrency(p.Spec.Concurrency, spec.Child("concurrency"))
	invalid = append(invalid, errs...)
	if len(invalid) > 0 {
		return nil, &Error{Reason: ReasonInvalid, Errs: invalid}
	}

	var compileErrs, costErrs field.ErrorList
	c.reads = &jsonproject.Tree{}
	compile := func(path *field.Path, expr string, want ...*cel.Type) (cel.Program, *cel.Type) {
		prog, out, err := compileExpr(expr, c.reads, want...)
		switch {
		case errors.Is(err, errOverBudget):
			costErrs = append(costErrs, field.Invalid(path, expr, err.Error()))
		case err != nil:
			compileErrs = append(compileErrs, field.Invalid(path, expr, err.Error()))
		}
		return prog, out
	}
	for i, m := range p.Spec.MatchConditions {
		prog, _ := compile(spec.Child("matchConditions").Index(i).Child("expression"), m.Expression, cel.BoolType)
		c.match = append(c.match, named{name: m.Name, prog: prog})
	}
	c.key, _ = compile(spec.Child("key", "expression"), p.Spec.Key.Expression, cel.StringType)
	var out *cel.Type
	c.inFlight, out = compile(spec.Child("inFlight"), p.Spec.InFlight, cel.BoolType, cel.TimestampType)
	c.inFlightIsTime = out != nil && out.IsExactType(cel.TimestampType)
	if p.Spec.Phase != "" {
		c.phase, _ = compile(spec.Child("phase"), p.Spec.Phase, cel.StringType)
	}
	if cc := p.Spec.Concurrency; cc != nil && cc.UserHeld != "" {
		c.userHeld, _ = compile(spec.Child("concurrency", "userHeld"), cc.UserHeld, cel.BoolType)
	}
	// What a queue put on an object (queueFacts), read of every object under any mode: a policy
	// changed from Queue to Forbid still sees (and drains) what it held.
	for _, a := range concurrencyReads(p.Spec.Concurrency) {
		c.reads.Add("metadata", "annotations", a)
	}
	switch {
	case len(compileErrs) > 0:
		return nil, &Error{Reason: ReasonCompileError, Errs: append(compileErrs, costErrs...)}
	case len(costErrs) > 0:
		return nil, &Error{Reason: ReasonOverBudget, Errs: costErrs}
	}
	var on []string
	c.Read, on = consistentRead(p.Spec.Key.Expression)
	switch c.Read {
	case v1alpha1.ReadFieldSelector:
		c.KeyField = on[0]
	case v1alpha1.ReadLabelSelector:
		c.LabelKeys, c.KeyField = on, "metadata.labels"
		c.pattern = keyPattern(p.Spec.Key.Expression)
	}
	return c, nil
}

var errOverBudget = errors.New("estimated cost exceeds the budget")

func compileExpr(expr string, t *jsonproject.Tree, want ...*cel.Type) (cel.Program, *cel.Type, error) {
	env := envSet.NewExpressionsEnv()
	ast, issues := env.Compile(expr)
	if issues != nil && issues.Err() != nil {
		return nil, nil, fmt.Errorf("compilation failed: %s", issues.String())
	}
	reads(ast.NativeRep().Expr(), t)
	out := ast.OutputType()
	ok := out.IsExactType(cel.DynType)
	for _, w := range want {
		ok = ok || out.IsExactType(w)
	}
	if !ok {
		names := make([]string, len(want))
		for i, w := range want {
			names[i] = w.String()
		}
		return nil, nil, fmt.Errorf("must evaluate to %s, not %s", strings.Join(names, " or "), out)
	}
	est, err := env.EstimateCost(ast, &library.CostEstimator{SizeEstimator: sizeBound{}})
	if err != nil {
		return nil, nil, fmt.Errorf("cost estimate failed: %v", err)
	}
	if est.Max > celconfig.PerCallLimit {
		return nil, nil, fmt.Errorf("%w: %d units at objects of %d-element lists, maps and strings, over the API server's per-expression limit of %d; bound the iteration (e.g. no nested comprehension over the object)",
			errOverBudget, est.Max, SizeBound, celconfig.PerCallLimit)
	}
	prog, err := env.Program(ast, cel.InterruptCheckFrequency(celconfig.CheckFrequency))
	if err != nil {
		return nil, nil, fmt.Errorf("program instantiation failed: %v", err)
	}
	return prog, out, nil
}

// sizeBound bounds every size the checker cannot know (see SizeBound).
type sizeBound struct{}

func (sizeBound) EstimateSize(checker.AstNode) *checker.SizeEstimate {
	return &checker.SizeEstimate{Min: 0, Max: SizeBound}
}

func (sizeBound) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// MaxNamePrefix is the longest namePrefix: with the 32 hex characters of the key, "-" and the 19
// digits of the largest occurrence number, a name fits the 63 characters of a label value (names
// of objects often end up in labels, as Kubernaut's children's do).
const MaxNamePrefix = 63 - rules.KeyLen - 1 - 19

func validPrefix(p string) bool {
	if p == "" || len(p) > MaxNamePrefix || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// EvalError is an expression that failed on one object (a missing field, a wrong type, the
// per-expression cost limit): for a create, the object's fault, answered 422.
type EvalError struct {
	Field string
	Err   error
}

func (e *EvalError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *EvalError) Unwrap() error { return e.Err }

// ErrEmptyKey: the key expression gave "".
var ErrEmptyKey = errors.New("the key is empty")

// ErrNoKey: the key expression read a map key, attribute or list element the object does not
// have (a label not set, a field left out).
var ErrNoKey = errors.New("the key is absent")

// IsKeyAbsent reports whether err, from Key, says the object has no key: it is not the policy's,
// unless the policy requires one (KeyRequired).
func IsKeyAbsent(err error) bool { return errors.Is(err, ErrNoKey) || errors.Is(err, ErrEmptyKey) }

// missing tells an evaluation that failed because the object lacks what the expression reads.
// cel-go exports no type for it: these are the messages of its resolution errors
// (interpreter/attributes.go, resolutionError) and of a map lookup (common/types/map.go), stable
// since cel-go 0.10.
func missing(err error) bool {
	msg := err.Error()
	for _, p := range []string{"no such key", "no such attribute", "index out of bounds"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// ErrNotHex: a Hex key that is not a lowercase hex SHA-256.
var ErrNotHex = errors.New("must be 64 lowercase hex characters (a SHA-256)")

// Matches reports whether every match condition holds for obj; a condition that fails to
// evaluate is an *EvalError (admission webhooks' matchConditions fail closed too).
func (c *Compiled) Matches(ctx context.Context, obj map[string]any) (bool, error) {
	for i, m := range c.match {
		v, err := eval(ctx, m.prog, obj)
		if err != nil {
			return false, &EvalError{Field: fmt.Sprintf("spec.matchConditions[%d] (%s)", i, m.name), Err: err}
		}
		if b, ok := v.Value().(bool); !ok || !b {
			return false, typeErr(ok, i, m.name, v)
		}
	}
	return true, nil
}

func typeErr(ok bool, i int, name string, v ref.Val) error {
	if ok {
		return nil
	}
	return &EvalError{Field: fmt.Sprintf("spec.matchConditions[%d] (%s)", i, name), Err: fmt.Errorf("gave %s, not bool", v.Type())}
}

// Key is obj's key in hex form (see rules.NameFor), and the key as the expression gave it.
func (c *Compiled) Key(ctx context.Context, obj map[string]any) (keyHex, key string, err error) {
	v, err := eval(ctx, c.key, obj)
	if err != nil {
		if missing(err) {
			err = fmt.Errorf("%w: %v", ErrNoKey, err)
		}
		return "", "", &EvalError{Field: "spec.key.expression", Err: err}
	}
	key, ok := v.Value().(string)
	switch {
	case !ok:
		return "", "", &EvalError{Field: "spec.key.expression", Err: fmt.Errorf("gave %s, not string", v.Type())}
	case key == "":
		return "", "", &EvalError{Field: "spec.key.expression", Err: ErrEmptyKey}
	case !c.hex:
		return rules.HashKey(key), key, nil
	case !rules.ValidFingerprint(key):
		return "", key, &EvalError{Field: "spec.key.expression", Err: ErrNotHex}
	}
	return key, key, nil
}

// Judge is how the engine takes an existing object: not the policy's (judged false) when a match
// condition is false or fails, or its key cannot be read; else its key and Fact, whose error (an
// in-flight rule that failed, the object kept in flight) is err. The index and the audit take
// stored objects this way.
func (c *Compiled) Judge(ctx context.Context, obj map[string]any, name string, created time.Time, deleting bool) (f decision.Fact, keyHex string, judged bool, err error) {
	f, keyHex, _, judged, err = c.JudgeKey(ctx, obj, name, created, deleting)
	return f, keyHex, judged, err
}

// JudgeKey is Judge, with the key as the expression gave it.
func (c *Compiled) JudgeKey(ctx context.Context, obj map[string]any, name string, created time.Time, deleting bool) (f decision.Fact, keyHex, key string, judged bool, err error) {
	if ok, err := c.Matches(ctx, obj); !ok || err != nil {
		return decision.Fact{}, "", "", false, nil
	}
	keyHex, key, err = c.Key(ctx, obj)
	if err != nil {
		return decision.Fact{}, "", "", false, nil
	}
	f, err = c.Fact(ctx, obj, name, keyHex, created, deleting)
	return f, keyHex, key, true, err
}

// Fact is what the engine keeps of an existing object: the in-flight instant and the phase (an
// object being deleted is not in flight, whatever the rule says). name and keyHex place it.
func (c *Compiled) Fact(ctx context.Context, obj map[string]any, name, keyHex string, created time.Time, deleting bool) (decision.Fact, error) {
	f := decision.Fact{Name: name, Created: created, Deleting: deleting}
	f.N, _ = rules.OccurrenceFor(c.prefix, keyHex, name)
	queueFacts(obj, &f)
	if f.Held && !f.Cancelled && c.userHeld != nil {
		// The hold rrguard put on is off though its annotation stays: someone started the
		// object by hand. Only the rule's plain false says so: a rule that cannot read the
		// object (a field missing, an error) leaves it held.
		if v, err := eval(ctx, c.userHeld, obj); err == nil && v.Value() == false {
			f.Held, f.Lifted = false, true
		}
	}
	if c.phase != nil {
		v, err := eval(ctx, c.phase, obj)
		if err != nil {
			return f, &EvalError{Field: "spec.phase", Err: err}
		}
		if s, ok := v.Value().(string); ok {
			f.Phase = s
		}
	}
	if deleting {
		return f, nil
	}
	v, err := eval(ctx, c.inFlight, obj)
	if err != nil {
		// An object the rule cannot read stays in flight: erring towards refusing a second one.
		f.Until = decision.Forever
		return f, &EvalError{Field: "spec.inFlight", Err: err}
	}
	switch x := v.Value().(type) {
	case bool:
		if x {
			f.Until = decision.Forever
		}
	case time.Time:
		f.Until = x
		if x.Year() >= foreverYear {
			f.Until = decision.Forever
		}
	default:
		f.Until = decision.Forever
		return f, &EvalError{Field: "spec.inFlight", Err: fmt.Errorf("gave %s, not bool or timestamp", v.Type())}
	}
	return f, nil
}

// foreverYear: an in-flight time in this year or later is how a rule says "until the object
// changes" (spec.inFlight), since CEL has no infinite timestamp.
const foreverYear = 9999

// Name is the name of occurrence n of the key keyHex.
func (c *Compiled) Name(keyHex string, n int64) string { return rules.NameFor(c.prefix, keyHex, n) }

// Occurrence is n when name is occurrence n of keyHex under this policy.
func (c *Compiled) Occurrence(keyHex, name string) (int64, bool) {
	return rules.OccurrenceFor(c.prefix, keyHex, name)
}

// DuplicateMessage is the message of a refused create's 409; kind is the target's (the
// admission request's).
func (c *Compiled) DuplicateMessage(kind, namespace string, inflight decision.Fact) string {
	phase := inflight.Phase
	if phase == "" {
		phase = "new"
	}
	msg := c.message
	if msg == "" {
		msg = "an object of this key is already in flight"
	}
	hint := c.hint
	if hint == "" {
		hint = "use it instead of creating another"
	}
	return fmt.Sprintf("%s: %s %s/%s (phase %s); %s", msg, kind, namespace, inflight.Name, phase, hint)
}

func eval(ctx context.Context, prog cel.Program, obj map[string]any) (ref.Val, error) {
	v, _, err := prog.ContextEval(ctx, map[string]any{"object": obj})
	if err != nil {
		return nil, err
	}
	if types.IsError(v) {
		return nil, fmt.Errorf("%v", v)
	}
	return v, nil
}

// NamePrefix starts every name the policy gives.
func (c *Compiled) NamePrefix() string { return c.prefix }
