package main

import (
	"path/filepath"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"strings"
	"testing"
	"time"
)

// The benchmark's short version for `make test`: every kind of row runs, on a tiny scale, against
// a real control plane with rrguard and the bare webhook in their own processes; what it checks is
// that the harness measures (rows filled, CPU read from every process, storms counted exactly,
// memory read after a forced GC), not how fast anything is.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane and builds two binaries")
	}
	dir := t.TempDir()
	// Rows of at least about a second: /proc counts CPU in 10 ms ticks, and in rows of 0.1 s
	// (20 latency signals, a storm of 60) the load generator's CPU read 0 on a busy machine.
	cfg := config{rounds: 1, creators: 4, signals: 200, rowTime: 20 * time.Second, sizes: []int{0}, memSizes: []int{0, 300},
		latencySignals: 200, stormSignal: 600, out: filepath.Join(dir, "results.json"), binDir: dir}
	b, err := runBench(cfg)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range b.rows {
		kinds[r.Kind+"/"+r.Mode]++
		if r.Signals == 0 || r.PerSecond <= 0 || r.CPU["kube-apiserver"] <= 0 || r.CPU["load generator"] <= 0 {
			t.Errorf("row %+v: no signals or no CPU read", r)
		}
		// etcd's CPU is read in every row; in a rrguard storm it may round to 0 (/proc counts
		// 10 ms ticks): all but one create are refused before storage, and the repeats share a
		// few writes.
		if etcd, ok := r.CPU["etcd"]; !ok || (etcd <= 0 && !(r.Mode == "rrguard" && strings.HasPrefix(r.Kind, "storm"))) {
			t.Errorf("row %+v: etcd's CPU not read", r)
		}
		if (r.Mode == "rrguard" && r.CPU["rrguard"] <= 0) || (r.Mode == "bare" && r.CPU["bare"] <= 0) {
			t.Errorf("row %+v: the webhook process's CPU was not read", r)
		}
		// An rrguard row ends once rrguard has released what it stored, after the hold; no
		// other row waits.
		if (r.Mode == "rrguard") != (r.ReleaseSeconds > 0) {
			t.Errorf("row %+v: release wait %.1fs", r, r.ReleaseSeconds)
		}
		// The Lease lock's storm fails signals by design (Kubernaut's Gateway gives up on
		// conflicts); that is measured, not a harness fault.
		if r.Duplicates != 0 || (r.Errors != 0 && !(r.Kind == "storm" && r.Mode == "lease-lock")) {
			t.Errorf("row %+v: errors or duplicates", r)
		}
		if r.Kind != "storm" && r.Kind != "storm-4p" {
			continue
		}
		if r.Mode == "rrguard" && (r.Counted != r.Signals || r.Stored != 1) {
			t.Errorf("rrguard storm: %d signals counted of %d, %d RRs", r.Counted, r.Signals, r.Stored)
		}
	}
	for _, k := range []string{"throughput/baseline", "throughput/bare", "throughput/rrguard", "throughput/lease-lock",
		"latency/baseline", "latency/bare", "latency/rrguard", "storm/rrguard", "storm-4p/rrguard", "storm/lease-lock"} {
		if kinds[k] != 1 {
			t.Errorf("%d rows of %s, want 1", kinds[k], k)
		}
	}
	if len(b.memory) != 2 || b.memory[1].LiveHeapMB <= 0 || b.memory[1].RSSMB <= 0 || b.memory[1].PeakRSSMB < b.memory[1].RSSMB {
		t.Errorf("memory rows: %+v", b.memory)
	}
	if md := b.markdown(time.Minute); len(md) < 500 {
		t.Errorf("report: %q", md)
	}
}

// bench-policy's short version: every mode's row runs once, tiny, and the Queue latency rows
// time every release after a key's first.
func TestBenchPolicySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane and builds two binaries")
	}
	ctrl.SetLogger(logr.Discard())
	cfg := config{rounds: 1, creators: 4, signals: 100, rowTime: 10 * time.Second, queueKeys: []int{1, 3}, binDir: t.TempDir()}
	// 300 objects in the memory row: queues of 10 held as the Queue sample holds them.
	b, err := runPolicyBench(cfg, 300)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.queueLatency) != 2 {
		t.Fatalf("queue latency rows: %+v", b.queueLatency)
	}
	for _, r := range b.queueLatency {
		if r.Releases != r.Keys*(queueDepth-1) || r.P50 <= 0 || r.Max < r.P99 {
			t.Errorf("queue latency row %+v: want %d releases timed", r, r.Keys*(queueDepth-1))
		}
	}
}
