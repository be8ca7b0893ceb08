package jsonproject

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	utiljson "k8s.io/apimachinery/pkg/util/json"
)

// prune is what Decode must equal: the whole object decoded, then cut to t.
func prune(v any, t *Tree) any {
	if t.all {
		return v
	}
	m, ok := v.(map[string]any)
	if !ok {
		return v // a non-object where the tree goes deeper is kept whole
	}
	out := map[string]any{}
	for k, c := range t.kids {
		if x, ok := m[k]; ok {
			out[k] = prune(x, c)
		}
	}
	return out
}

func randomValue(r *rand.Rand, depth int) any {
	keys := []string{"a", "b", "spec", "status", "metadata", "labels", "x/y", "é", `q"uote`, "back\\slash"}
	switch n := r.IntN(10); {
	case depth > 3 || n < 3:
		switch r.IntN(6) {
		case 0:
			return strings.Repeat(`s"\`, r.IntN(3)) + "τ}]{["
		case 1:
			return int64(r.IntN(1 << 40))
		case 2:
			return 1.5
		case 3:
			return true
		case 4:
			return nil
		default:
			return ""
		}
	case n < 5:
		l := make([]any, r.IntN(4))
		for i := range l {
			l[i] = randomValue(r, depth+1)
		}
		return l
	default:
		m := map[string]any{}
		for range r.IntN(5) {
			m[keys[r.IntN(len(keys))]] = randomValue(r, depth+1)
		}
		return m
	}
}

func randomTree(r *rand.Rand) *Tree {
	t := &Tree{}
	keys := []string{"a", "b", "spec", "status", "metadata", "labels", "x/y", "é", `q"uote`, "missing"}
	for range 1 + r.IntN(4) {
		var path []string
		for range r.IntN(4) {
			path = append(path, keys[r.IntN(len(keys))])
		}
		t.Add(path...)
	}
	return t
}

// Along the kept paths, a projected object is the whole decoded object, for random objects,
// trees and formatting.
func TestDecodeEqualsPrunedWhole(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 5000 {
		obj := map[string]any{}
		for range 1 + r.IntN(6) {
			obj[fmt.Sprint("k", r.IntN(3))] = randomValue(r, 0)
			obj[[]string{"spec", "status", "metadata"}[r.IntN(3)]] = randomValue(r, 0)
		}
		data, _ := json.Marshal(obj)
		if i%2 == 1 {
			data, _ = json.MarshalIndent(obj, " ", "\t")
		}
		tree := randomTree(r)
		got, err := Decode(data, tree)
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		var whole any
		if err := utiljson.Unmarshal(data, &whole); err != nil {
			t.Fatal(err)
		}
		if want := prune(whole, tree); !reflect.DeepEqual(any(got), want) {
			t.Fatalf("%s along %v:\n got %#v\nwant %#v", data, tree.Paths(), got, want)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	tree := (&Tree{}).Add("spec", "key").Add("status")
	for _, in := range []string{``, `[]`, `"x"`, `{`, `{"spec"`, `{"spec":`, `{"spec":{"key":"unterminated}}`,
		`{"spec":{"key":1,}}`, `{"a":1 "b":2}`, `{"a":1}x`, `{"status":{"x":tru}}`, `{"a":"\`, `{"spec":{"key":[1,2}}`, `{1:2}`} {
		if _, err := Decode([]byte(in), tree); !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: %v, want ErrSyntax", in, err)
		}
	}
}

// Whatever the bytes, Decode never panics; on valid JSON objects it equals the pruned whole.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"spec":{"signalFingerprint":"ab","x":[1,{"y":"}"}]},"status":{"phase":"Running"}}`))
	f.Add([]byte(`{"metadata":{"labels":{"a\"b":"c"}},"spec":"\\"}`))
	f.Add([]byte(`{"a":[[[[`))
	tree := (&Tree{}).Add("spec", "signalFingerprint").Add("status", "phase").Add("metadata", "labels")
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Decode(data, tree)
		var whole any
		if err != nil || !json.Valid(data) || utiljson.Unmarshal(data, &whole) != nil {
			return
		}
		if want := prune(whole, tree); !reflect.DeepEqual(any(got), want) {
			t.Fatalf("%s: got %#v want %#v", data, got, want)
		}
	})
}
