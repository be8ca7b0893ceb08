package decision

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

const settle = 10 * time.Second

// queued is an object admitted by a Queue or Replace policy d before now.
func queued(name string, d time.Duration, held, running bool) Fact {
	f := Fact{Name: name, Queued: now.Add(-d), Held: held}
	if running || held {
		f.Until = Forever // a held object is "in flight" by most rules: it has not finished
	}
	return f
}

// lifted: rrguard's annotation still says held, but someone lifted the hold (Fact.Lifted).
func lifted(f Fact) Fact { f.Held, f.Lifted = false, true; return f }

// running counts the objects in flight that rrguard does not hold.
func running(fs []Fact) int {
	n := 0
	for _, f := range fs {
		if !f.Held && f.InFlight(now) {
			n++
		}
	}
	return n
}

func names(fs []Fact) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Name)
	}
	return out
}

func TestPlanQueue(t *testing.T) {
	q := Rule{Mode: Queue, MaxInFlight: 1, Settle: settle}
	for _, c := range []struct {
		name    string
		facts   []Fact
		max     int
		release []string
		waiting []string
		lift    []string
		recheck time.Duration // after now; 0 for none
	}{
		{name: "nothing"},
		{name: "one settled", facts: []Fact{queued("a", time.Minute, true, false)}, release: []string{"a"}},
		{name: "oldest first, whatever the listing order",
			facts:   []Fact{queued("c", time.Minute, true, false), queued("a", 3*time.Minute, true, false), queued("b", 2*time.Minute, true, false)},
			release: []string{"a"}, waiting: []string{"b", "c"}},
		{name: "ties broken by name",
			facts:   []Fact{queued("b", time.Minute, true, false), queued("a", time.Minute, true, false)},
			release: []string{"a"}, waiting: []string{"b"}},
		{name: "one in flight holds the queue",
			facts:   []Fact{queued("a", 3*time.Minute, false, true), queued("b", 2*time.Minute, true, false)},
			waiting: []string{"b"}},
		{name: "an object the policy never held counts in flight",
			facts:   []Fact{{Name: "legacy", Until: Forever}, queued("b", 2*time.Minute, true, false)},
			waiting: []string{"b"}},
		{name: "finished ones do not",
			facts:   []Fact{queued("a", 3*time.Minute, false, false), {Name: "gone", Deleting: true}, queued("b", 2*time.Minute, true, false)},
			release: []string{"b"}},
		{name: "not settled: wait, and say when",
			facts:   []Fact{queued("a", 2*time.Second, true, false)},
			waiting: []string{"a"}, recheck: settle - 2*time.Second},
		{name: "a settled head goes while a younger one settles",
			facts:   []Fact{queued("a", time.Minute, true, false), queued("b", time.Second, true, false)},
			release: []string{"a"}, waiting: []string{"b"}, recheck: settle - time.Second},
		{name: "maxInFlight 3, one running", max: 3,
			facts: []Fact{queued("r", 5*time.Minute, false, true), queued("a", 4*time.Minute, true, false),
				queued("b", 3*time.Minute, true, false), queued("c", 2*time.Minute, true, false)},
			release: []string{"a", "b"}, waiting: []string{"c"}},
		{name: "more running than allowed (a mode change) releases nothing", max: 1,
			facts:   []Fact{{Name: "x", Until: Forever}, {Name: "y", Until: Forever}, queued("a", time.Minute, true, false)},
			waiting: []string{"a"}},
		{name: "a held object being deleted is not released",
			facts: []Fact{func() Fact { f := queued("a", time.Minute, true, false); f.Deleting = true; return f }()}},
		{name: "a hold lifted by hand runs: it holds the queue, its annotation is dropped",
			facts:   []Fact{lifted(queued("b", 2*time.Minute, false, true)), queued("a", 3*time.Minute, true, false)},
			waiting: []string{"a"}, lift: []string{"b"}},
		{name: "a hold lifted by hand, ended: the queue goes on",
			facts:   []Fact{lifted(queued("b", 2*time.Minute, false, false)), queued("a", 3*time.Minute, true, false)},
			release: []string{"a"}, lift: []string{"b"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := q
			if c.max > 0 {
				r.MaxInFlight = c.max
			}
			p := PlanKey(c.facts, r, now)
			if got, want := fmt.Sprint(names(p.Release)), fmt.Sprint(append([]string{}, c.release...)); got != want {
				t.Errorf("release %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(names(p.Waiting)), fmt.Sprint(append([]string{}, c.waiting...)); got != want {
				t.Errorf("waiting %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(names(p.Lift)), fmt.Sprint(append([]string{}, c.lift...)); got != want {
				t.Errorf("lift %s, want %s", got, want)
			}
			var want time.Time
			if c.recheck > 0 {
				want = now.Add(c.recheck)
			}
			if !p.Recheck.Equal(want) {
				t.Errorf("recheck %v, want %v", p.Recheck, want)
			}
			if len(p.Cancel) > 0 {
				t.Errorf("Queue cancelled %v", names(p.Cancel))
			}
			if r.MaxInFlight-running(c.facts)-len(p.Release) <= 0 != p.Full {
				t.Errorf("full %v with %d running and %d released of %d", p.Full, running(c.facts), len(p.Release), r.MaxInFlight)
			}
		})
	}
}

func TestPlanReplace(t *testing.T) {
	cancelled := func(f Fact) Fact { f.Cancelled = true; return f }
	deleting := func(f Fact) Fact { f.Deleting, f.Until = true, time.Time{}; return f }
	for _, c := range []struct {
		name            string
		facts           []Fact
		noWait          bool
		release, cancel []string
		lift            []string
	}{
		{name: "one held, nothing else", facts: []Fact{queued("a", time.Minute, true, false)}, release: []string{"a"}},
		{name: "three quick creates: the first cancelled, the middle cancelled held, the newest waits for the first to end",
			facts:  []Fact{queued("a", 3*time.Minute, false, true), queued("b", time.Minute, true, false), queued("c", 30*time.Second, true, false)},
			cancel: []string{"a", "b"}},
		{name: "cancels written, the first still winding down: wait",
			facts: []Fact{cancelled(queued("a", 3*time.Minute, false, true)), cancelled(queued("b", time.Minute, true, false)), queued("c", 30*time.Second, true, false)}},
		{name: "the first ended: the newest runs",
			facts:   []Fact{cancelled(queued("a", 3*time.Minute, false, false)), cancelled(queued("b", time.Minute, true, false)), queued("c", 30*time.Second, true, false)},
			release: []string{"c"}},
		{name: "deleted by the cancel, still going: wait",
			facts: []Fact{deleting(queued("a", 3*time.Minute, false, true)), queued("c", 30*time.Second, true, false)}},
		{name: "without waitForEnd: released once the cancels are written", noWait: true,
			facts:   []Fact{cancelled(queued("a", 3*time.Minute, false, true)), queued("c", 30*time.Second, true, false)},
			release: []string{"c"}},
		{name: "without waitForEnd: not before", noWait: true,
			facts:  []Fact{queued("a", 3*time.Minute, false, true), queued("c", 30*time.Second, true, false)},
			cancel: []string{"a"}},
		{name: "a newer one not settled: the settled newest is cancelled, nothing released",
			facts:  []Fact{queued("b", time.Minute, true, false), queued("c", time.Second, true, false)},
			cancel: []string{"b"}},
		{name: "the newest started by hand: it replaces the older ones, held or running, and nothing is released",
			facts:  []Fact{queued("a", 3*time.Minute, false, true), queued("b", 2*time.Minute, true, false), lifted(queued("c", time.Minute, false, true))},
			cancel: []string{"a", "b"}, lift: []string{"c"}},
		{name: "a hold lifted by hand is cancelled as a running one, after its annotation is dropped",
			facts:  []Fact{lifted(queued("a", 3*time.Minute, false, true)), queued("c", 30*time.Second, true, false)},
			cancel: []string{"a"}, lift: []string{"a"}},
		{name: "an object the policy never admitted is not cancelled",
			facts:   []Fact{{Name: "users", Until: Forever}, queued("c", time.Minute, true, false)},
			release: []string{"c"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := PlanKey(c.facts, Rule{Mode: Replace, WaitForEnd: !c.noWait, Settle: settle}, now)
			if got, want := fmt.Sprint(names(p.Release)), fmt.Sprint(append([]string{}, c.release...)); got != want {
				t.Errorf("release %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(names(p.Cancel)), fmt.Sprint(append([]string{}, c.cancel...)); got != want {
				t.Errorf("cancel %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(names(p.Lift)), fmt.Sprint(append([]string{}, c.lift...)); got != want {
				t.Errorf("lift %s, want %s", got, want)
			}
		})
	}
}

// TestPlanReplicasAgree is the release argument on random queues: two replicas reading at
// different instants, each seeing every object admitted before its own settle point, never
// release two different objects while maxInFlight is 1: what each releases is the head of one
// order.
func TestPlanReplicasAgree(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	r := Rule{Mode: Queue, MaxInFlight: 1, Settle: settle}
	for i := range 2000 {
		var all []Fact
		for j := range 1 + rnd.IntN(12) {
			all = append(all, queued(fmt.Sprintf("o%02d", j), time.Duration(rnd.IntN(40))*time.Second, true, false))
		}
		// A replica reading at now-d sees every object admitted before now-d-settle, and any
		// of the later ones it happens to (committed early).
		view := func(d time.Duration) []Fact {
			var v []Fact
			for _, f := range all {
				if f.Queued.Before(now.Add(-d-settle)) || (!f.Queued.After(now.Add(-d)) && rnd.IntN(2) == 0) {
					v = append(v, f)
				}
			}
			return v
		}
		d := time.Duration(rnd.IntN(5)) * time.Second
		a := PlanKey(view(d), r, now.Add(-d))
		b := PlanKey(view(0), r, now)
		if len(a.Release) == 1 && len(b.Release) == 1 && a.Release[0].Name != b.Release[0].Name {
			t.Fatalf("case %d: replicas released %s and %s", i, a.Release[0].Name, b.Release[0].Name)
		}
	}
}
