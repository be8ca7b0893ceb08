// Package decision is rrguard's decision core: given what is known of the objects that share a
// key, and the key's high-water mark, it says which occurrence number a new object takes, or which
// object in flight it duplicates. It is pure: no clock, no API, no policy. Every path that decides
// (the index, the consistent read, any policy) builds Facts and calls Decide, so the index and a
// read can only disagree on what they saw, never on what it means.
package decision

import (
	"errors"
	"math"
	"time"
)

// Fact is what a decision reads of one existing object of the key.
type Fact struct {
	Name string
	// N is the object's occurrence number under the naming rule; 0 for a name outside it (a
	// legacy object's), which takes no part in numbering but may still be in flight.
	N int64
	// Until is the instant up to which the object is in flight: the zero time for "not in
	// flight", Forever for "until it changes". A rule that ends at a time (the RR's
	// nextAllowedExecution) gives that time, so a fact needs no re-evaluation as the clock moves.
	Until time.Time
	// Phase is shown in a duplicate's message; "" when the object has none yet.
	Phase string
	// Created is the object's creationTimestamp: it breaks ties between objects in flight.
	Created time.Time

	// What a Queue or Replace policy put on the object at admission (see Plan); zero for an
	// object it did not admit.
	//
	// Queued is the instant rrguard admitted it: the queue's order, name breaking ties.
	Queued time.Time
	// Held: rrguard holds it still; a release clears it.
	Held bool
	// Lifted: rrguard's annotation says it holds the object, but its hold is off (its creator
	// or a user started it by hand): it is not held, and counts by the in-flight rule; the
	// queue's controller drops the stale annotation (Plan.Lift).
	Lifted bool
	// Cancelled: rrguard has cancelled it (Replace).
	Cancelled bool
	// Deleting: its deletion has been asked for (it is not in flight, but it may still be
	// winding down).
	Deleting bool
}

// Forever is Until for an object in flight until it changes.
var Forever = time.Unix(1<<62, 0).UTC()

// InFlight reports whether the object is in flight at now, by the policy's rule.
func (f Fact) InFlight(now time.Time) bool { return now.Before(f.Until) }

// Waiting: rrguard holds the object and will release it (a Queue or Replace policy's, not yet
// cancelled or deleted).
func (f Fact) Waiting() bool { return f.Held && !f.Cancelled && !f.Deleting }

// Blocks reports whether the object blocks a new one of its key at now: it is in flight, or
// held to run later (under a policy changed from Queue to Forbid, what it held still runs).
func (f Fact) Blocks(now time.Time) bool { return f.InFlight(now) || f.Waiting() }

// ErrExhausted: the key's occurrence numbers have reached the largest int64.
var ErrExhausted = errors.New("occurrence numbers of this key are exhausted")

// Outcome is a decision: either Duplicate is set (the object in flight a new one must fold into),
// or Next is the occurrence number the new object takes.
type Outcome struct {
	Next      int64
	Duplicate *Fact
}

// Decide decides a create of a key whose existing objects are facts (all of them, read as of now
// or vouched for by the index) and whose high-water mark (the highest number ever released) is
// mark. A new number is 1 + max(highest number among facts, mark): an object being deleted still
// holds its name, so it still counts. With several objects in flight (only legacy objects or an
// orchestrator reopening an old one can make more than one), the duplicate is the newest: highest
// number, then latest creation, then greatest name, so any two readers of the same objects name
// the same one.
func Decide(facts []Fact, mark int64, now time.Time) (Outcome, error) {
	newest := mark
	var dup *Fact
	for i := range facts {
		f := &facts[i]
		newest = max(newest, f.N)
		if f.Blocks(now) && (dup == nil || newer(f, dup)) {
			dup = f
		}
	}
	if dup != nil {
		return Outcome{Duplicate: dup}, nil
	}
	if newest == math.MaxInt64 {
		return Outcome{}, ErrExhausted
	}
	return Outcome{Next: newest + 1}, nil
}

func newer(a, b *Fact) bool {
	if a.N != b.N {
		return a.N > b.N
	}
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	return a.Name > b.Name
}
