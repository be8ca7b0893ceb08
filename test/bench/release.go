package main

import (
	"fmt"
	"strings"
	"time"
)

// rrguard's release in the benchmark. Every object rrguard admits carries its finalizer until the
// hold ends; then the sweep raises the mark and removes the finalizer (a mark write per shard and
// round, a GET and a patch per object). With the production hold (3 min) those writes land in
// whatever row runs 3 minutes later, the baseline's or the bare webhook's; so the benchmark's
// rrguard runs with a 7 s hold and each rrguard row ends only when rrguard has released every
// object it stored, its CPU counted over the wait too. A hold that short needs the timings under
// which the index may still decide (2 x request timeout + index lag < hold): a 1 s request bound
// and a 4 s lag, as the tests' testenv.IndexTrusted. Requests here finish in milliseconds, so the
// bound holds; the sweep's period and batch stay the production ones (10 s, 100), which set how many
// mark writes a round shares.
var releaseTimings = []string{"--request-timeout=1s", "--index-max-lag=4s", "--release-min-age=" + benchHold.String()}

const (
	benchHold = 7 * time.Second
	// releaseWaitLimit bounds the wait for a row's releases: the hold, then a round per 100
	// objects at most a second apart, after a sweep period (10 s); a row stores a few thousand.
	releaseWaitLimit = 3 * time.Minute
	// releasePoll: each poll scrapes rrguard's /metrics, which costs rrguard and the load
	// generator CPU the idle sample does not have; once a second keeps it under 0.01 ms per object.
	releasePoll = time.Second
	// idleWindow is how long the processes are watched idle before a row whose releases it waits
	// for: their background CPU over the wait is taken out, since the other rows have no wait.
	idleWindow = 2 * time.Second
)

// releasedCount is rrguard's count of objects it has released, from its /metrics: finalizers
// (Forbid) and held objects (Queue, Replace), each object counted once.
func releasedCount(metricsAddr string) float64 {
	n := 0.0
	for k, v := range scrapeMetrics(metricsAddr) {
		if k == "rrguard_finalizers_released_total" || strings.HasPrefix(k, "rrguard_queue_releases_total{") {
			n += v
		}
	}
	return n
}

// releaseWindow accounts for a row whose objects rrguard releases after its last signal: each
// process's idle rate and rrguard's releases before the row, then the wait for the row's. A nil
// window is a row that waits for nothing.
type releaseWindow struct {
	metricsAddr string
	idle        map[string]float64 // CPU seconds per second, by process
	before      float64
	wait        time.Duration
}

// openRelease samples the idle rates over idleWindow (cpu reads each process's CPU seconds) and
// rrguard's releases so far, at metricsAddr; call it before the row begins.
func openRelease(metricsAddr string, cpu func() map[string]float64) *releaseWindow {
	before := cpu()
	time.Sleep(idleWindow)
	after := cpu()
	w := &releaseWindow{metricsAddr: metricsAddr, idle: map[string]float64{}, before: releasedCount(metricsAddr)}
	for k, v := range after {
		w.idle[k] = (v - before[k]) / idleWindow.Seconds()
	}
	return w
}

// await waits until rrguard has released want finalizers more than before the row; started, when
// set, runs once the first release is seen (a profile of the release, not of the hold before it).
func (w *releaseWindow) await(want int, started func()) error {
	if w == nil {
		return nil
	}
	begin := time.Now()
	defer func() { w.wait = time.Since(begin) }()
	for {
		got := releasedCount(w.metricsAddr) - w.before
		if got > 0 && started != nil {
			go started()
			started = nil
		}
		if got >= float64(want) {
			return nil
		}
		if time.Since(begin) > releaseWaitLimit {
			return fmt.Errorf("rrguard released %.0f of the row's %d objects in %s", got, want, releaseWaitLimit)
		}
		time.Sleep(releasePoll)
	}
}

// waited is how long await waited (0 for a nil window).
func (w *releaseWindow) waited() time.Duration {
	if w == nil {
		return 0
	}
	return w.wait
}

// spent is the CPU seconds each process used from before to after, with its idle CPU over the
// wait taken out (never below zero).
func (w *releaseWindow) spent(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		idle := 0.0
		if w != nil {
			idle = w.idle[k] * w.wait.Seconds()
		}
		out[k] = max(v-before[k]-idle, 0)
	}
	return out
}
