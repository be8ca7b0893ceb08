package decision

import (
	"slices"
	"time"
)

// Mode is what a create of a key with one in flight gets (the policy's spec.concurrency.mode).
type Mode string

const (
	Forbid  Mode = "Forbid"
	Queue   Mode = "Queue"
	Replace Mode = "Replace"
)

// Rule is how a key's held objects are released.
type Rule struct {
	Mode Mode
	// MaxInFlight is how many released objects of a key may be in flight at once (Queue; a
	// Forbid policy draining what an earlier Queue held uses 1).
	MaxInFlight int
	// WaitForEnd (Replace): release the newest only once what it cancelled has ended.
	WaitForEnd bool
	// Settle is how long after its admission an object may be released or counted as the newest:
	// every object admitted before it has then been stored or refused (the API server's bound on
	// a request), so every replica's consistent read shows the same objects up to it.
	Settle time.Duration
}

// Plan is what a key's queue needs now.
type Plan struct {
	// Lift is the objects whose hold someone else lifted: rrguard's annotation is dropped
	// from them before anything else is written (a cancel tests it is gone).
	Lift []Fact
	// Release is the held objects to release, oldest first.
	Release []Fact
	// Cancel is the older objects Replace ends, oldest first.
	Cancel []Fact
	// Recheck, when not zero, is when the plan may change with no change to the objects (a held
	// object settles).
	Recheck time.Time
	// Waiting is the held objects left waiting, oldest first (the queue after this plan).
	Waiting []Fact
	// Full (Queue): no slot is left after this plan's releases, so no held object, settled or
	// not, would be released now: only an object leaving flight moves the queue.
	Full bool
}

// Order sorts facts in queue order: admission instant, then name (unique in a namespace).
func Order(facts []Fact) {
	slices.SortStableFunc(facts, func(a, b Fact) int {
		if c := a.Queued.Compare(b.Queued); c != 0 {
			return c
		}
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
}

// PlanKey decides, from every object of one key read as of now (facts), which held objects to
// release and which older ones to cancel. It is deterministic: replicas that read the same
// objects plan the same writes, and each release is a patch that tests the object is still held,
// so two replicas release an object once.
//
// Only settled objects (admitted at least Settle before now) are released or count as the
// newest. Any two consistent reads show the same settled objects up to the older read's settle
// point (every object admitted before it has been stored by then), and objects are released
// oldest first, so two replicas that read at different instants choose from the same head of
// the queue: neither can release an object the other would have released after one it never
// saw (docs/design.md, "Queue and Replace").
func PlanKey(facts []Fact, r Rule, now time.Time) Plan {
	var held, ours []Fact
	running := 0
	for _, f := range facts {
		switch {
		case f.Waiting():
			held = append(held, f)
		case !f.Held && f.InFlight(now):
			running++
		}
		if !f.Queued.IsZero() {
			ours = append(ours, f)
		}
	}
	Order(held)
	Order(ours)
	var p Plan
	for _, f := range ours {
		if f.Lifted && !f.Deleting {
			p.Lift = append(p.Lift, f)
		}
	}
	settled := len(held)
	for i, f := range held {
		if f.Queued.After(now.Add(-r.Settle)) {
			settled = i
			break
		}
	}
	if settled < len(held) {
		p.Recheck = held[settled].Queued.Add(r.Settle)
	}
	switch r.Mode {
	case Replace:
		return planReplace(p, held, settled, ours, r, now)
	default:
		slots := max(r.MaxInFlight, 1) - running
		n := min(max(slots, 0), settled)
		p.Release = held[:n:n]
		p.Waiting = held[n:]
		p.Full = n >= slots
		return p
	}
}

// planReplace: the newest held object replaces every older one the policy admitted (cancelled,
// held or in flight), and is released when they have ended (or, without WaitForEnd, once each is
// cancelled). Nothing is released while a newer held object has not settled: it will replace
// the newest settled one, which must never run.
func planReplace(p Plan, held []Fact, settled int, ours []Fact, r Rule, now time.Time) Plan {
	// The newest object that may still run: a held one, or one someone started by hand. When
	// that is a started one, it has replaced every older one, held ones included, and nothing
	// is released.
	var started *Fact
	for i := range ours {
		f := ours[i]
		switch {
		case f.Waiting():
			started = nil
		case f.Lifted && !f.Cancelled && !f.Deleting:
			started = &ours[i]
		}
	}
	if started != nil {
		for _, f := range ours {
			if before(f, *started) && !f.Cancelled && !f.Deleting && (f.InFlight(now) || f.Held) {
				p.Cancel = append(p.Cancel, f)
			}
		}
		return p
	}
	if len(held) == 0 {
		return p
	}
	newest := held[len(held)-1]
	pending := false
	for _, f := range ours {
		if !before(f, newest) {
			continue
		}
		live := f.InFlight(now) || f.Held
		if !f.Cancelled && !f.Deleting && live {
			p.Cancel = append(p.Cancel, f)
		}
		if r.WaitForEnd && (f.Deleting || (f.InFlight(now) && !f.Held)) {
			pending = true
		}
		if !r.WaitForEnd && !f.Cancelled && !f.Deleting && live {
			pending = true
		}
	}
	if settled == len(held) && !pending {
		p.Release = []Fact{newest}
		return p
	}
	p.Waiting = []Fact{newest}
	return p
}

// before: a comes before b in queue order.
func before(a, b Fact) bool {
	if c := a.Queued.Compare(b.Queued); c != 0 {
		return c < 0
	}
	return a.Name < b.Name
}
