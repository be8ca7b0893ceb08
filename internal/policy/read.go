package policy

import (
	"slices"
	"strings"

	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/jsonproject"
)

// consistentRead chooses how a decision reads the key's objects when the index cannot vouch for
// itself:
//
//   - LabelSelector when the key reads the object only through labels named by constants
//     (object.metadata.labels['repo'], object.metadata.labels.branch), unguarded: an object
//     lacking one of them has no key (the expression fails on it), so listing the objects that
//     carry all of them, then evaluating the key, finds every object of the key;
//   - FieldSelector when the key is one field path (object.spec.signalFingerprint): the engine
//     lists by it where the API server declares it selectable and scans otherwise;
//   - NamespaceScan for any other key.
func consistentRead(expr string) (v1alpha1.ConsistentRead, []string) {
	parsed, iss := envSet.NewExpressionsEnv().Parse(expr)
	if iss != nil && iss.Err() != nil {
		return v1alpha1.ReadNamespaceScan, nil
	}
	root := parsed.NativeRep().Expr()
	if _, ok := labelAccess(root); !ok && isFieldPath(root) {
		p, _, _ := objectPath(root)
		return v1alpha1.ReadFieldSelector, []string{strings.Join(p, ".")}
	}
	var labels []string
	pure := true
	var walk func(e ast.Expr)
	walk = func(e ast.Expr) {
		if !pure || e == nil {
			return
		}
		if k, ok := labelAccess(e); ok {
			if !slices.Contains(labels, k) {
				labels = append(labels, k)
			}
			return
		}
		switch e.Kind() {
		case ast.IdentKind:
			if e.AsIdent() == "object" {
				pure = false
			}
		case ast.SelectKind:
			walk(e.AsSelect().Operand())
		case ast.CallKind:
			c := e.AsCall()
			if c.IsMemberFunction() {
				walk(c.Target())
			}
			for _, a := range c.Args() {
				walk(a)
			}
		case ast.ListKind:
			for _, x := range e.AsList().Elements() {
				walk(x)
			}
		case ast.MapKind, ast.StructKind, ast.ComprehensionKind:
			pure = false // rare in a key; not worth proving
		}
	}
	walk(root)
	if !pure || len(labels) == 0 {
		return v1alpha1.ReadNamespaceScan, nil
	}
	slices.Sort(labels)
	return v1alpha1.ReadLabelSelector, labels
}

// labelPattern is a key of labels joined by separators no label value can hold (label values are
// letters, digits, '-', '_' and '.'): labels['repo'] + '/' + labels['branch']. Such a key gives its
// labels' values back (LabelValues), so a consistent read selects the key's objects by equality,
// and no object of the key can carry other values.
type labelPattern struct {
	labels []string // in key order
	seps   []string // between them
}

func keyPattern(expr string) *labelPattern {
	parsed, iss := envSet.NewExpressionsEnv().Parse(expr)
	if iss != nil && iss.Err() != nil {
		return nil
	}
	var parts []ast.Expr
	var flatten func(e ast.Expr)
	flatten = func(e ast.Expr) {
		if e.Kind() == ast.CallKind && e.AsCall().FunctionName() == "_+_" && len(e.AsCall().Args()) == 2 {
			flatten(e.AsCall().Args()[0])
			flatten(e.AsCall().Args()[1])
			return
		}
		parts = append(parts, e)
	}
	flatten(parsed.NativeRep().Expr())
	p := &labelPattern{}
	for i, e := range parts {
		if i%2 == 0 {
			k, ok := labelAccess(e)
			if !ok {
				return nil
			}
			p.labels = append(p.labels, k)
			continue
		}
		if e.Kind() != ast.LiteralKind {
			return nil
		}
		lit, ok := e.AsLiteral().(types.String)
		if !ok || !strings.ContainsFunc(string(lit), notInLabelValue) {
			return nil
		}
		p.seps = append(p.seps, string(lit))
	}
	if len(parts)%2 == 0 {
		return nil // ends with a separator
	}
	return p
}

func notInLabelValue(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
}

// LabelValues gives back the label values a key of the policy was made from, when its key is a
// label pattern (labels joined by separators no label value can hold); false otherwise.
func (c *Compiled) LabelValues(key string) (map[string]string, bool) {
	p := c.pattern
	if p == nil {
		return nil, false
	}
	out := map[string]string{}
	rest := key
	for i, l := range p.labels {
		if i == len(p.seps) {
			out[l] = rest
			break
		}
		j := strings.Index(rest, p.seps[i])
		if j < 0 {
			return nil, false
		}
		out[l], rest = rest[:j], rest[j+len(p.seps[i]):]
	}
	return out, true
}

// labelAccess matches object.metadata.labels['k'] and object.metadata.labels.k (not has()).
func labelAccess(e ast.Expr) (string, bool) {
	switch e.Kind() {
	case ast.CallKind:
		c := e.AsCall()
		if c.FunctionName() != "_[_]" || len(c.Args()) != 2 || !isLabels(c.Args()[0]) || c.Args()[1].Kind() != ast.LiteralKind {
			return "", false
		}
		k, ok := c.Args()[1].AsLiteral().(types.String)
		return string(k), ok
	case ast.SelectKind:
		s := e.AsSelect()
		if s.IsTestOnly() || !isLabels(s.Operand()) {
			return "", false
		}
		return s.FieldName(), true
	}
	return "", false
}

func isLabels(e ast.Expr) bool {
	return selects(e, "labels", func(m ast.Expr) bool {
		return selects(m, "metadata", func(o ast.Expr) bool { return o.Kind() == ast.IdentKind && o.AsIdent() == "object" })
	})
}

func selects(e ast.Expr, fieldName string, operand func(ast.Expr) bool) bool {
	if e.Kind() != ast.SelectKind {
		return false
	}
	s := e.AsSelect()
	return !s.IsTestOnly() && s.FieldName() == fieldName && operand(s.Operand())
}

// isFieldPath matches object.a.b... with at least two fields, no index, no has().
func isFieldPath(e ast.Expr) bool {
	depth := 0
	for e.Kind() == ast.SelectKind {
		s := e.AsSelect()
		if s.IsTestOnly() {
			return false
		}
		depth++
		e = s.Operand()
	}
	return depth >= 2 && e.Kind() == ast.IdentKind && e.AsIdent() == "object"
}

// reads adds to t the paths of `object` that the expression e reads: each chain of field
// selections and constant string indexes rooted at `object` is kept whole, except a chain under
// has(), whose presence only is kept; any other use of `object` keeps the whole object.
func reads(e ast.Expr, t *jsonproject.Tree) {
	if e == nil {
		return
	}
	if p, testOnly, ok := objectPath(e); ok {
		if testOnly {
			t.Touch(p...)
		} else {
			t.Add(p...)
		}
		return
	}
	switch e.Kind() {
	case ast.SelectKind:
		reads(e.AsSelect().Operand(), t)
	case ast.CallKind:
		c := e.AsCall()
		if c.IsMemberFunction() {
			reads(c.Target(), t)
		}
		for _, a := range c.Args() {
			reads(a, t)
		}
	case ast.ListKind:
		for _, x := range e.AsList().Elements() {
			reads(x, t)
		}
	case ast.MapKind:
		for _, en := range e.AsMap().Entries() {
			reads(en.AsMapEntry().Key(), t)
			reads(en.AsMapEntry().Value(), t)
		}
	case ast.StructKind:
		for _, f := range e.AsStruct().Fields() {
			reads(f.AsStructField().Value(), t)
		}
	case ast.ComprehensionKind:
		c := e.AsComprehension()
		for _, x := range []ast.Expr{c.IterRange(), c.AccuInit(), c.LoopCondition(), c.LoopStep(), c.Result()} {
			reads(x, t)
		}
	}
}

// objectPath matches object, object.a.b, object.a['b'] and has(object.a.b) (testOnly).
func objectPath(e ast.Expr) (path []string, testOnly, ok bool) {
	switch e.Kind() {
	case ast.IdentKind:
		return nil, false, e.AsIdent() == "object"
	case ast.SelectKind:
		s := e.AsSelect()
		p, under, ok := objectPath(s.Operand())
		if !ok || under {
			return nil, false, false
		}
		return append(p, s.FieldName()), s.IsTestOnly(), true
	case ast.CallKind:
		c := e.AsCall()
		if c.FunctionName() != "_[_]" || len(c.Args()) != 2 || c.Args()[1].Kind() != ast.LiteralKind {
			return nil, false, false
		}
		k, isString := c.Args()[1].AsLiteral().(types.String)
		p, under, ok := objectPath(c.Args()[0])
		if !isString || !ok || under {
			return nil, false, false
		}
		return append(p, string(k)), false, true
	}
	return nil, false, false
}
