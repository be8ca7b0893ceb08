package decision

import (
	"errors"
	"math"
	"testing"
	"time"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func TestDecide(t *testing.T) {
	done := time.Time{}
	at := func(d time.Duration) time.Time { return now.Add(d) }
	for _, c := range []struct {
		name  string
		facts []Fact
		mark  int64
		next  int64
		dup   string
		err   error
	}{
		{name: "nothing", next: 1},
		{name: "mark only", mark: 7, next: 8},
		{name: "finished", facts: []Fact{{Name: "a-1", N: 1, Until: done}, {Name: "a-2", N: 2, Until: at(-time.Second)}}, next: 3},
		{name: "mark above the facts", facts: []Fact{{Name: "a-2", N: 2}}, mark: 5, next: 6},
		{name: "facts above the mark", facts: []Fact{{Name: "a-9", N: 9}}, mark: 5, next: 10},
		{name: "legacy names do not number", facts: []Fact{{Name: "legacy"}}, next: 1},
		{name: "in flight for ever", facts: []Fact{{Name: "a-1", N: 1}, {Name: "a-2", N: 2, Until: Forever}}, dup: "a-2"},
		{name: "in flight until a time", facts: []Fact{{Name: "a-1", N: 1, Until: at(time.Second)}}, dup: "a-1"},
		{name: "until now is over", facts: []Fact{{Name: "a-1", N: 1, Until: now}}, next: 2},
		{name: "newest number wins", facts: []Fact{{Name: "a-3", N: 3, Until: Forever}, {Name: "a-5", N: 5, Until: Forever}, {Name: "a-4", N: 4, Until: Forever}}, dup: "a-5"},
		{name: "then the latest creation", facts: []Fact{
			{Name: "old", Until: Forever, Created: at(-time.Hour)}, {Name: "new", Until: Forever, Created: at(-time.Minute)}}, dup: "new"},
		{name: "then the greatest name", facts: []Fact{{Name: "b", Until: Forever}, {Name: "c", Until: Forever}, {Name: "a", Until: Forever}}, dup: "c"},
		{name: "a numbered one before a legacy one", facts: []Fact{{Name: "legacy", Until: Forever, Created: now}, {Name: "a-1", N: 1, Until: Forever}}, dup: "a-1"},
		{name: "exhausted", facts: []Fact{{Name: "max", N: math.MaxInt64}}, err: ErrExhausted},
		{name: "exhausted by the mark", mark: math.MaxInt64, err: ErrExhausted},
		{name: "exhausted but in flight is a duplicate", facts: []Fact{{Name: "max", N: math.MaxInt64, Until: Forever}}, dup: "max"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The order of the facts must not matter: try them forwards and backwards.
			for _, facts := range [][]Fact{c.facts, reversed(c.facts)} {
				out, err := Decide(facts, c.mark, now)
				switch {
				case c.err != nil:
					if !errors.Is(err, c.err) {
						t.Fatalf("err %v, want %v", err, c.err)
					}
				case err != nil:
					t.Fatal(err)
				case c.dup != "":
					if out.Duplicate == nil || out.Duplicate.Name != c.dup {
						t.Fatalf("duplicate %+v, want %s", out.Duplicate, c.dup)
					}
				case out.Duplicate != nil || out.Next != c.next:
					t.Fatalf("%+v, want next %d", out, c.next)
				}
			}
		})
	}
}

func reversed(in []Fact) []Fact {
	out := make([]Fact, len(in))
	for i, f := range in {
		out[len(in)-1-i] = f
	}
	return out
}

func BenchmarkDecide(b *testing.B) {
	facts := []Fact{{Name: "a-1", N: 1}, {Name: "a-2", N: 2}, {Name: "a-3", N: 3, Until: now.Add(-time.Minute)}}
	for b.Loop() {
		if _, err := Decide(facts, 2, now); err != nil {
			b.Fatal(err)
		}
	}
}
