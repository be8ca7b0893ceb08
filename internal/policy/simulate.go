package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/config/policies"
	"github.com/rrguard/rrguard/internal/decision"
)

// Result is what the engine would do with one object created in order (Simulate).
type Result struct {
	Object    string // resource namespace/name (or generateName)
	Matched   bool
	Keyless   bool // matched, but has no key and the policy requires none: left alone
	Key       string
	KeyHex    string
	InFlight  bool   // the object as written is in flight at now
	Until     string // when the rule gave a time, that time
	Name      string // the name it would get; empty when refused or left alone
	Duplicate string // the object in flight it would be refused for
	Err       error  // an expression failed on it: the 422 a create would get

	// Under Queue and Replace (the object keeps its name; Name is empty):
	UserHeld  bool // created held by its creator: left alone
	Runs      bool // released once every create of the file is in
	Held      int  // still held: its place in its key's queue (1 is next)
	Cancelled bool // cancelled by a newer one (Replace)
}

// Simulate runs creates of objs, in order, through the decision core against an empty cluster
// with no marks: each admitted object joins its key's objects with its own in-flight verdict, so
// a file with a finished run and then a new one shows -1 and -2. Nothing is read or written.
func (c *Compiled) Simulate(ctx context.Context, objs []*unstructured.Unstructured, now time.Time) []Result {
	type nsKey struct{ ns, keyHex string }
	stored := map[nsKey][]decision.Fact{}
	out := make([]Result, 0, len(objs))
	for _, u := range objs {
		r := Result{Object: fmt.Sprintf("%s %s/%s", c.GroupResource, u.GetNamespace(), displayName(u))}
		obj := u.Object
		matched, err := c.Matches(ctx, obj)
		r.Matched = matched
		if err != nil || !matched {
			r.Err = err
			out = append(out, r)
			continue
		}
		if r.KeyHex, r.Key, r.Err = c.Key(ctx, obj); r.Err != nil {
			if IsKeyAbsent(r.Err) && !c.KeyRequired {
				r.Keyless, r.Err = true, nil
			}
			out = append(out, r)
			continue
		}
		f, err := c.Fact(ctx, obj, "", r.KeyHex, now, u.GetDeletionTimestamp() != nil)
		r.Err, r.InFlight = err, f.InFlight(now)
		if c.inFlightIsTime && !f.Until.IsZero() && !f.Until.Equal(decision.Forever) {
			r.Until = f.Until.UTC().Format(time.RFC3339)
		}
		k := nsKey{u.GetNamespace(), r.KeyHex}
		if !c.Names() {
			if r.UserHeld, err = c.UserHeld(ctx, obj); err != nil {
				r.Err = err
			} else if !r.UserHeld {
				// Held at admission, in file order; named by its place in the file.
				f = decision.Fact{Name: strconv.Itoa(len(out)), Queued: now.Add(time.Duration(len(out))), Held: true}
				stored[k] = append(stored[k], f)
			}
			out = append(out, r)
			continue
		}
		o, err := decision.Decide(stored[k], 0, now)
		switch {
		case err != nil:
			r.Err = err
		case o.Duplicate != nil:
			r.Duplicate = o.Duplicate.Name
		default:
			r.Name = c.Name(r.KeyHex, o.Next)
			f.Name, f.N = r.Name, o.Next
			stored[k] = append(stored[k], f)
		}
		out = append(out, r)
	}
	if !c.Names() {
		// Every create is in: what the queue controller would do with each key, settled.
		for _, facts := range stored {
			p := decision.PlanKey(facts, c.Rule(0), now.Add(time.Duration(len(out))))
			at := func(f decision.Fact) *Result { i, _ := strconv.Atoi(f.Name); return &out[i] }
			for _, f := range p.Release {
				at(f).Runs = true
			}
			for _, f := range p.Cancel {
				at(f).Cancelled = true
			}
			for i, f := range p.Waiting {
				at(f).Held = i + 1
			}
		}
	}
	return out
}

func displayName(u *unstructured.Unstructured) string {
	if n := u.GetName(); n != "" {
		return n
	}
	if g := u.GetGenerateName(); g != "" {
		return g + "*"
	}
	return "(no name)"
}

// ReadObjects reads YAML or JSON documents (separated by ---), unwrapping Lists. Numbers are
// read as the API server sends them (integers as int64).
func ReadObjects(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if u.IsList() {
			l, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", i, err)
			}
			for j := range l.Items {
				out = append(out, &l.Items[j])
			}
			continue
		}
		out = append(out, u)
	}
}

// ReadPolicy reads one UniquenessPolicy document (YAML or JSON), refusing unknown fields.
func ReadPolicy(b []byte) (*v1alpha1.UniquenessPolicy, error) {
	var p v1alpha1.UniquenessPolicy
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return nil, err
	}
	if gvk := p.GroupVersionKind(); gvk != v1alpha1.GroupVersion.WithKind("UniquenessPolicy") {
		return nil, fmt.Errorf("not a UniquenessPolicy of %s: apiVersion %q, kind %q", v1alpha1.GroupVersion, p.APIVersion, p.Kind)
	}
	return &p, nil
}

// RemediationRequests is the RR policy rrguard ships (config/policies), compiled.
func RemediationRequests() (*Compiled, error) {
	p, err := Builtin("remediationrequests")
	if err != nil {
		return nil, err
	}
	return Compile(p, "")
}

// ErrUnknownBuiltin: no policy of that name is built into rrguard.
var ErrUnknownBuiltin = errors.New("no such built-in policy")

// BuiltinNames are the policies built into rrguard (config/policies), sorted.
func BuiltinNames() []string {
	entries, _ := fs.ReadDir(policies.Files, ".") // an embed.FS reads its root without error
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".yaml"); ok {
			names = append(names, n)
		}
	}
	return names
}

// Builtin is the built-in policy name, as shipped.
func Builtin(name string) (*v1alpha1.UniquenessPolicy, error) {
	b, err := policies.Files.ReadFile(name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("%w: %q (built in: %s)", ErrUnknownBuiltin, name, strings.Join(BuiltinNames(), ", "))
	}
	p, err := ReadPolicy(b)
	if err != nil {
		return nil, err
	}
	if p.Name != name {
		return nil, fmt.Errorf("built-in policy file %s.yaml names policy %q", name, p.Name)
	}
	return p, nil
}
