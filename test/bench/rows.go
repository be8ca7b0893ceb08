package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/test/testenv"
)

const cellLabel = "rrguard-bench-cell"

// spec says what one row runs.
type spec struct {
	kind        string // throughput, latency, storm
	m           mode
	ns          string
	size, round int
	creators    int
	// processes the creators are spread over, each with a Creator of its own (0: one).
	processes      int
	signals        int
	maxTime        time.Duration
	oneFingerprint bool
	// during, when set, starts as the row begins (profiles).
	during func()
}

// row is what one row measured.
type row struct {
	Kind      string  `json:"kind"`
	Mode      string  `json:"mode"`
	Size      int     `json:"existingRRs"`
	Round     int     `json:"round"`
	Creators  int     `json:"creators"`
	Processes int     `json:"processes"`
	Signals   int     `json:"signals"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"signalsPerSecond"`
	P50       float64 `json:"p50ms"`
	P99       float64 `json:"p99ms"`
	// CPU is milliseconds of CPU per signal, by process: kube-apiserver, etcd, rrguard, bare,
	// load generator. An rrguard row's includes the release of what it stored (ReleaseSeconds
	// after its last signal, the processes' idle CPU over that wait taken out).
	CPU            map[string]float64 `json:"cpuMsPerSignal"`
	ReleaseSeconds float64            `json:"releaseWaitSeconds,omitempty"`
	// ReleaseCPU is the part of CPU spent after the last signal, releasing (ms per signal), and
	// IdleCPU the idle rate taken out of it (ms of CPU per second), by process.
	ReleaseCPU map[string]float64 `json:"releaseCpuMsPerSignal,omitempty"`
	IdleCPU    map[string]float64 `json:"idleCpuMsPerSecond,omitempty"`
	APIPerSig  float64            `json:"apiRequestsPerSignal"`
	Stored     int                `json:"rrsStored"`
	Duplicates int                `json:"duplicates"`
	Counted    int                `json:"signalsCounted"`
	Errors     int                `json:"errors"`
	FirstError string             `json:"firstError,omitempty"`
	// rrguard's own account of the row (its /metrics, before and after): decisions, the API
	// reads they made, and decisions taken from consistent reads because the index could not
	// vouch for itself.
	Decisions int `json:"rrguardDecisions,omitempty"`
	Reads     int `json:"rrguardReads,omitempty"`
	Fallbacks int `json:"rrguardFallbacks,omitempty"`
	// RRGuardRequests is rrguard's own API requests per signal, by method (client-go's count):
	// the decisions' reads, the release's GET, PATCH and mark writes.
	RRGuardRequests map[string]float64 `json:"rrguardRequestsPerSignal,omitempty"`
}

var cell atomic.Int64

// cpu reads each process's CPU seconds so far.
func (b *bench) cpu() map[string]float64 {
	out := map[string]float64{}
	read := func(name string, pid int) {
		if s, err := testenv.CPUSeconds(pid); err == nil {
			out[name] = s
		}
	}
	read("kube-apiserver", b.api)
	read("etcd", b.etcd)
	read("load generator", os.Getpid())
	if b.rrguard != nil {
		read("rrguard", b.rrguard.pid())
	}
	if b.bare != nil {
		read("bare", b.bare.pid())
	}
	return out
}

// settle waits until the API server is idle (under 5% of a core over 500 ms, at most 10 s), so a
// row does not pay for the garbage or the watch traffic of the row before.
func (b *bench) settle() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		before, _ := testenv.CPUSeconds(b.api)
		time.Sleep(500 * time.Millisecond)
		after, _ := testenv.CPUSeconds(b.api)
		if after-before < 0.025 {
			return
		}
	}
}

func (b *bench) runRow(ctx context.Context, s spec) (row, error) {
	id := strconv.FormatInt(cell.Add(1), 10)
	fingerprint := func(i int) string {
		if s.oneFingerprint {
			return testenv.Fingerprint(s.ns + "/storm/" + id)
		}
		return testenv.Fingerprint(s.ns + "/" + id + "/" + strconv.Itoa(i))
	}
	labelled := labelledClient{Client: b.c, labels: map[string]string{cellLabel: id}}
	procs := make([]*process, max(s.processes, 1))
	for i := range procs {
		cr, err := creator.New(labelled, creator.Options{})
		if err != nil {
			return row{}, err
		}
		procs[i] = &process{c: labelled, cr: cr}
	}
	latencies := make([]time.Duration, s.signals)
	var next, done, created, errCount atomic.Int64
	var firstErr atomic.Value
	runtime.GC()
	b.settle()
	// rrguard's rows end once rrguard has released what they stored (release.go).
	var release *releaseWindow
	if s.m.name == rrguard.name && b.rrguardMetrics != "" {
		release = openRelease(b.rrguardMetrics, b.cpu)
	}
	cpuBefore := b.cpu()
	reqBefore := b.requests.All.Load()
	guardBefore := b.rrguardCounts()
	begin := time.Now()
	if s.during != nil {
		go s.during()
	}
	var wg sync.WaitGroup
	for w := range s.creators {
		wg.Add(1)
		pod := fmt.Sprintf("gateway-%d", w)
		p := procs[w%len(procs)]
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= s.signals || time.Since(begin) > s.maxTime {
					return
				}
				t := time.Now()
				isNew, err := s.m.signal(ctx, p, s.ns, fingerprint(i), pod)
				latencies[i] = time.Since(t)
				done.Add(1)
				if isNew {
					created.Add(1)
				}
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	cpuCreated := b.cpu()
	var profile func()
	if s.during != nil {
		profile = func() { b.profiles("release") }
	}
	if err := release.await(int(created.Load()), profile); err != nil {
		return row{}, err
	}
	cpuAfter := b.cpu()
	guardAfter := b.rrguardCounts()
	n := int(done.Load())
	r := row{Kind: s.kind, Mode: s.m.name, Size: s.size, Round: s.round, Creators: s.creators, Processes: len(procs), Signals: n,
		Seconds: elapsed.Seconds(), PerSecond: float64(n) / elapsed.Seconds(), CPU: map[string]float64{},
		APIPerSig: float64(b.requests.All.Load()-reqBefore) / float64(n), Errors: int(errCount.Load()), ReleaseSeconds: release.waited().Seconds()}
	for k, v := range release.spent(cpuBefore, cpuAfter) {
		r.CPU[k] = v * 1000 / float64(n)
	}
	if release != nil {
		r.ReleaseCPU, r.IdleCPU = map[string]float64{}, map[string]float64{}
		for k, v := range release.spent(cpuCreated, cpuAfter) {
			r.ReleaseCPU[k] = v * 1000 / float64(n)
		}
		for k, v := range release.idle {
			r.IdleCPU[k] = v * 1000
		}
	}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	r.Decisions = int(guardAfter["decisions"] - guardBefore["decisions"])
	r.Reads = int(guardAfter["reads"] - guardBefore["reads"])
	r.Fallbacks = int(guardAfter["fallbacks"] - guardBefore["fallbacks"])
	for k, v := range guardAfter {
		if m, ok := strings.CutPrefix(k, "requests "); ok && v > guardBefore[k] {
			if r.RRGuardRequests == nil {
				r.RRGuardRequests = map[string]float64{}
			}
			r.RRGuardRequests[m] = (v - guardBefore[k]) / float64(n)
		}
	}
	lat := slices.Clone(latencies[:n])
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	r.P50, r.P99 = ms(lat[n/2]), ms(lat[n*99/100])

	// What the row stored: RRs beyond one in flight per fingerprint are duplicates (nothing here
	// completes), and the signals they hold (creator.Signals) should add up to those sent.
	var list v1alpha1.RemediationRequestList
	if err := b.env.Client.List(ctx, &list, client.InNamespace(s.ns), client.MatchingLabels{cellLabel: id}); err != nil {
		return r, err
	}
	perFP := map[string]int{}
	for i := range list.Items {
		perFP[list.Items[i].Spec.SignalFingerprint]++
		r.Counted += int(creator.Signals(&list.Items[i]))
	}
	r.Stored = len(list.Items)
	if s.m.name != baseline.name && s.m.name != bare.name {
		for _, k := range perFP {
			r.Duplicates += k - 1
		}
	}
	fmt.Printf("%-10s %-10s size=%-6d round=%d creators=%-3d/%d %6d signals %7.0f/s p50=%6.1fms p99=%7.1fms api/sig=%4.2f cpu ms/sig: %s release wait %.1fs stored=%d dup=%d counted=%d err=%d rrguard decisions=%d reads=%d fallbacks=%d %s\n",
		s.kind, s.m.name, s.size, s.round, s.creators, len(procs), n, r.PerSecond, r.P50, r.P99, r.APIPerSig, cpuString(r.CPU), r.ReleaseSeconds,
		r.Stored, r.Duplicates, r.Counted, r.Errors, r.Decisions, r.Reads, r.Fallbacks, r.FirstError)
	if release != nil {
		fmt.Printf("           release: cpu ms/sig %s (idle ms/s taken out: %s); rrguard requests per signal: %v\n",
			cpuString(r.ReleaseCPU), cpuString(r.IdleCPU), r.RRGuardRequests)
	}
	return r, nil
}

func cpuString(m map[string]float64) string {
	var parts []string
	for _, k := range []string{"kube-apiserver", "etcd", "rrguard", "bare", "load generator"} {
		if v, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, v))
		}
	}
	return strings.Join(parts, ", ")
}

// labelledClient stamps the row's label on every RR it creates, to find them afterwards.
type labelledClient struct {
	client.Client
	labels map[string]string
}

func (l labelledClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	if _, ok := obj.(*v1alpha1.RemediationRequest); ok {
		obj.SetLabels(l.labels)
	}
	return l.Client.Create(ctx, obj, opts...)
}

// memRow is rrguard's memory with a number of RRs in the namespace it watches.
type memRow struct {
	RRs          int     `json:"rrs"`
	StartSeconds float64 `json:"startupSeconds"`
	LiveHeapMB   float64 `json:"liveHeapMB"`
	RSSMB        float64 `json:"rssMB"`
	// PeakRSSMB is the largest RSS since the process started: the start-up's first list included.
	PeakRSSMB float64 `json:"peakRssMB"`
}

// memoryRows fills one namespace with RRs of Kubernaut's size step by step and, at each step,
// starts rrguard watching it: time to ready (list, index, seeding), then the live heap after a
// forced GC and the RSS.
func (b *bench) memoryRows(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-memory-"}}
	if err := b.env.Client.Create(ctx, ns); err != nil {
		return err
	}
	have := 0
	for _, n := range b.cfg.memSizes {
		if n > have {
			fmt.Printf("creating %d RRs of Kubernaut's size in %s ...\n", n-have, ns.Name)
			if err := testenv.Fill(ctx, b.env.Client, ns.Name, have, n, true); err != nil {
				return err
			}
			have = n
		}
		b.settle()
		begin := time.Now()
		s, err := b.rrguardFn(ns.Name)
		if err != nil {
			return err
		}
		r := memRow{RRs: n, StartSeconds: time.Since(begin).Seconds()}
		live, err := s.liveHeapMB()
		r.LiveHeapMB = live
		r.RSSMB = float64(testenv.RSSBytes(s.pid())) / (1 << 20)
		r.PeakRSSMB = float64(testenv.PeakRSSBytes(s.pid())) / (1 << 20)
		s.stop()
		if err != nil {
			return err
		}
		fmt.Printf("memory: %d RRs: ready in %.1fs, live heap %.1f MB, RSS %.1f MB, peak RSS %.1f MB\n", n, r.StartSeconds, r.LiveHeapMB, r.RSSMB, r.PeakRSSMB)
		b.memory = append(b.memory, r)
	}
	return nil
}

// rrguardCounts reads rrguard's decision, read and fallback counters from its /metrics (zeros
// when no replica runs).
func (b *bench) rrguardCounts() map[string]float64 {
	out := map[string]float64{}
	if b.rrguard == nil || b.rrguardMetrics == "" {
		return out
	}
	for name, v := range scrapeMetrics(b.rrguardMetrics) {
		switch {
		case name == "rrguard_decision_api_reads_count":
			out["decisions"] += v
		case name == "rrguard_decision_api_reads_sum":
			out["reads"] += v
		case strings.HasPrefix(name, "rrguard_consistent_list_fallbacks_total"):
			out["fallbacks"] += v
		case strings.HasPrefix(name, "rest_client_requests_total{"):
			// client-go's count of rrguard's own requests, by method.
			if _, m, ok := strings.Cut(name, `method="`); ok {
				m, _, _ = strings.Cut(m, `"`)
				out["requests "+m] += v
			}
		}
	}
	return out
}

// scrapeMetrics reads the plain-HTTP /metrics at addr: each series ("name{labels}", as exposed) and
// its value; none when it cannot be read.
func scrapeMetrics(addr string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = v
		}
	}
	return out
}
