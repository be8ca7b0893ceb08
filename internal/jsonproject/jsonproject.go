// Package jsonproject decodes the parts of a JSON object that a set of paths names and skips the
// rest without allocating it: a policy reads a handful of fields of objects that carry kilobytes
// of payload, status and managed fields, and decoding all of it into maps costs more than the
// decision it serves (a Kubernaut RR: 63 µs into a map, about 10 µs projected).
//
// What it keeps is decoded as k8s.io/apimachinery/pkg/util/json decodes (integers as int64), so a
// projected object reads, along the kept paths, exactly as the whole decoded object would.
package jsonproject

import (
	"bytes"
	"errors"
	"fmt"

	utiljson "k8s.io/apimachinery/pkg/util/json"
)

// Tree is a set of paths into an object. The zero Tree keeps nothing; Add builds it.
type Tree struct {
	all  bool
	kids map[string]*Tree
}

// All is a Tree that keeps everything.
func All() *Tree { return &Tree{all: true} }

// Add keeps the value at path (and everything below it); an empty path keeps the whole object.
func (t *Tree) Add(path ...string) *Tree {
	if n := t.node(path); n != nil {
		n.all, n.kids = true, nil
	}
	return t
}

// Touch keeps whether path exists (and, where its value is not an object, the value), not what
// an object there holds: what has() needs.
func (t *Tree) Touch(path ...string) *Tree {
	t.node(path)
	return t
}

// node is the node at path, made if missing; nil when an ancestor keeps everything already.
func (t *Tree) node(path []string) *Tree {
	n := t
	for _, k := range path {
		if n.all {
			return nil
		}
		if n.kids == nil {
			n.kids = map[string]*Tree{}
		}
		c := n.kids[k]
		if c == nil {
			c = &Tree{}
			n.kids[k] = c
		}
		n = c
	}
	if n.all {
		return nil
	}
	return n
}

// Merge returns a new Tree that keeps what t and others keep.
func (t *Tree) Merge(others ...*Tree) *Tree {
	out := &Tree{}
	for _, x := range append([]*Tree{t}, others...) {
		out.merge(x)
	}
	return out
}

func (t *Tree) merge(x *Tree) {
	if t.all || x == nil {
		return
	}
	if x.all {
		t.all, t.kids = true, nil
		return
	}
	for k, c := range x.kids {
		if t.kids == nil {
			t.kids = map[string]*Tree{}
		}
		n := t.kids[k]
		if n == nil {
			n = &Tree{}
			t.kids[k] = n
		}
		n.merge(c)
	}
}

// Paths lists the kept paths, for messages and tests.
func (t *Tree) Paths() [][]string {
	var out [][]string
	var walk func(n *Tree, at []string)
	walk = func(n *Tree, at []string) {
		if n.all {
			out = append(out, append([]string(nil), at...))
			return
		}
		for k, c := range n.kids {
			walk(c, append(at, k))
		}
	}
	walk(t, nil)
	return out
}

// ErrSyntax is wrapped by every error of Decode on data that is not a JSON object.
var ErrSyntax = errors.New("not a JSON object")

// Decode returns data's members along t. Skipped values are scanned for their extent only; the
// caller that needs data valid throughout checks it (json.Valid).
func Decode(data []byte, t *Tree) (map[string]any, error) {
	s := scanner{b: data}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return nil, s.fail("an object")
	}
	if t.all {
		var m map[string]any
		if err := utiljson.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSyntax, err)
		}
		return m, nil
	}
	m, err := s.object(t)
	if err != nil {
		return nil, err
	}
	s.ws()
	if s.i != len(s.b) {
		return nil, s.fail("the end of the data")
	}
	return m, nil
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) fail(want string) error {
	return fmt.Errorf("%w: want %s at offset %d", ErrSyntax, want, s.i)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// object reads the object at s.i (which is '{') keeping what t names.
func (s *scanner) object(t *Tree) (map[string]any, error) {
	s.i++ // '{'
	out := map[string]any{}
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return out, nil
	}
	for {
		s.ws()
		kb, escaped, err := s.key()
		if err != nil {
			return nil, err
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return nil, s.fail("':'")
		}
		s.i++
		s.ws()
		if s.i >= len(s.b) {
			return nil, s.fail("a value")
		}
		// A lookup by string(kb) does not allocate; only kept members' names are copied.
		c := t.kids[string(kb)]
		if escaped {
			var k string
			if err := utiljson.Unmarshal(kb, &k); err != nil {
				return nil, fmt.Errorf("%w: member name: %v", ErrSyntax, err)
			}
			c = t.kids[k]
			kb = []byte(k)
		}
		switch {
		case c == nil:
			if err := s.skip(); err != nil {
				return nil, err
			}
		case !c.all && s.b[s.i] == '{':
			v, err := s.object(c)
			if err != nil {
				return nil, err
			}
			out[string(kb)] = v
		default: // kept whole: a leaf of the tree, or a non-object where the tree goes deeper
			start := s.i
			if err := s.skip(); err != nil {
				return nil, err
			}
			var v any
			if err := utiljson.Unmarshal(s.b[start:s.i], &v); err != nil {
				return nil, fmt.Errorf("%w: member %q: %v", ErrSyntax, kb, err)
			}
			out[string(kb)] = v
		}
		s.ws()
		if s.i >= len(s.b) {
			return nil, s.fail("',' or '}'")
		}
		switch s.b[s.i] {
		case ',':
			s.i++
		case '}':
			s.i++
			return out, nil
		default:
			return nil, s.fail("',' or '}'")
		}
	}
}

// key reads a member name: the bytes between the quotes when it holds no escape, else the quoted
// name (escaped true), for the caller to unquote.
func (s *scanner) key() (name []byte, escaped bool, err error) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false, s.fail("a member name")
	}
	start := s.i
	escaped, err = s.str()
	if err != nil {
		return nil, false, err
	}
	if escaped {
		return s.b[start:s.i], true, nil
	}
	return s.b[start+1 : s.i-1], false, nil
}

// str skips the string at s.i (which is '"') and reports whether it holds an escape. It finds the
// next quote, then looks for a backslash before it (both vectorized searches); only a string with
// an escape takes a second look.
func (s *scanner) str() (bool, error) {
	i := s.i + 1
	escaped := false
	for {
		j := bytes.IndexByte(s.b[i:], '"')
		if j < 0 {
			s.i = len(s.b)
			return false, s.fail("the end of a string")
		}
		k := bytes.IndexByte(s.b[i:i+j], '\\')
		if k < 0 {
			s.i = i + j + 1
			return escaped, nil
		}
		escaped = true
		i += k + 2 // the backslash and the character it escapes
		if i > len(s.b) {
			s.i = len(s.b)
			return false, s.fail("the end of a string")
		}
	}
}

// skip moves past the value at s.i.
func (s *scanner) skip() error {
	switch s.b[s.i] {
	case '"':
		_, err := s.str()
		return err
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, err := s.str(); err != nil {
					return err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return nil
				}
				if depth < 0 {
					return s.fail("a balanced value")
				}
			}
			s.i++
		}
		return s.fail("the end of a value")
	default:
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if s.i == start {
					return s.fail("a value")
				}
				return nil
			}
			s.i++
		}
		if s.i == start {
			return s.fail("a value")
		}
		return nil
	}
}
