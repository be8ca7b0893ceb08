package main

import (
	"fmt"
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

// releasedCount is rrguard's count of finalizers it has released, from its /metrics.
func releasedCount(metricsAddr string) float64 {
	return scrapeMetrics(metricsAddr)["rrguard_finalizers_released_total"]
}

// awaitReleases waits until rrguard has released want finalizers more than before, and returns
// how long that took; started, when set, runs once the first release is seen (a profile of the
// release, not of the hold before it).
func awaitReleases(metricsAddr string, before float64, want int, started func()) (time.Duration, error) {
	begin := time.Now()
	for {
		got := releasedCount(metricsAddr) - before
		if got > 0 && started != nil {
			go started()
			started = nil
		}
		if got >= float64(want) {
			return time.Since(begin), nil
		}
		if time.Since(begin) > releaseWaitLimit {
			return time.Since(begin), fmt.Errorf("rrguard released %.0f of the row's %d objects in %s", got, want, releaseWaitLimit)
		}
		time.Sleep(releasePoll)
	}
}

// idleRates is each process's CPU seconds per second over idleWindow, read by cpu.
func idleRates(cpu func() map[string]float64) map[string]float64 {
	before := cpu()
	time.Sleep(idleWindow)
	after := cpu()
	out := map[string]float64{}
	for k, v := range after {
		out[k] = (v - before[k]) / idleWindow.Seconds()
	}
	return out
}

// withoutIdle takes idle CPU (rates, per second) over wait out of the CPU seconds used, per
// process, never below zero.
func withoutIdle(used, rates map[string]float64, wait time.Duration) map[string]float64 {
	out := map[string]float64{}
	for k, v := range used {
		out[k] = max(v-rates[k]*wait.Seconds(), 0)
	}
	return out
}
