package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rrguard/rrguard/test/testenv"
)

const (
	beginMarker = "<!-- bench:begin -->"
	endMarker   = "<!-- bench:end -->"
)

// spread is the median and range of some values.
type spread struct{ med, lo, hi float64 }

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{med, s[0], s[len(s)-1]}
}

func (s spread) f(format string) string {
	return fmt.Sprintf(format+" ("+format+"-"+format+")", s.med, s.lo, s.hi)
}

// pick returns the rows of one kind, mode and size, by round.
// stormRows are the storm rows in the order the report shows them, with the requests per signal
// each may take.
var stormRows = []struct {
	label, kind, mode string
	maxReq            float64
}{
	{"rrguard, 1 process", "storm", rrguard.name, 1.3},
	{"rrguard, 4 processes", "storm-4p", rrguard.name, 2},
	{"lease-lock (Kubernaut today)", "storm", lease.name, 0},
}

func (b *bench) pick(kind, mode string, size int) map[int]row {
	out := map[int]row{}
	for _, r := range b.rows {
		if r.Kind == kind && r.Mode == mode && r.Size == size {
			out[r.Round] = r
		}
	}
	return out
}

// paired is f(row of mode, row of ref) for every round both ran.
func paired(a, ref map[int]row, f func(x, y row) float64) []float64 {
	var out []float64
	for round, x := range a {
		if y, ok := ref[round]; ok {
			out = append(out, f(x, y))
		}
	}
	return out
}

func values(rows map[int]row, f func(row) float64) []float64 {
	var out []float64
	for _, r := range rows {
		out = append(out, f(r))
	}
	return out
}

func perSecond(x, y row) float64 { return x.PerSecond / y.PerSecond }

func landedPerSecond(r row) float64 { return float64(r.Signals-r.Errors) / r.Seconds }

func (b *bench) markdown(elapsed time.Duration) string {
	var w strings.Builder
	host, _ := os.Hostname()
	target := "make bench"
	if b.cfg.quick {
		target = "make bench-quick"
	}
	k8s, etcd := testenv.K8sVersion, "?"
	if b.env != nil && b.env.Release != nil {
		k8s = b.env.Release.String()
	}
	if root, err := testenv.Root(); err == nil {
		if v, err := os.ReadFile(filepath.Join(root, "test", "tools", "testbin", "kube-apiserver", k8s, "etcd-version")); err == nil {
			etcd = strings.TrimSpace(string(v))
		}
	}
	fmt.Fprintf(&w, "`%s` of %s on %s: %d CPUs, %s, kube-apiserver %s and etcd %s on loopback; %d rounds; %s in all.\n\n",
		target, time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), runtime.Version(), k8s, etcd, b.cfg.rounds, elapsed.Round(time.Second))

	fmt.Fprintf(&w, "### Throughput: new fingerprints, %d creators\n\n", b.cfg.creators)
	w.WriteString("Median of rounds (range). Ratios are paired per round. CPU is milliseconds per signal, per process.\n\n")
	w.WriteString("rrguard reads: API reads per decision by rrguard's own count, and decisions taken from consistent reads because its index could not vouch for itself (all rounds).\n\n")
	w.WriteString("| existing RRs | mode | signals/row | signals/s | × baseline | × bare | kube-apiserver | etcd | rrguard | bare | load gen | API req/signal | rrguard reads (fallbacks) | duplicates | errors |\n")
	w.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, size := range b.cfg.sizes {
		base, bareRows := b.pick("throughput", baseline.name, size), b.pick("throughput", bare.name, size)
		for _, m := range []mode{baseline, bare, rrguard, lease} {
			rows := b.pick("throughput", m.name, size)
			if len(rows) == 0 {
				continue
			}
			xBare := "-"
			if m.name == rrguard.name {
				xBare = spreadOf(paired(rows, bareRows, perSecond)).f("%.2f")
			}
			cpu := func(p string) string {
				v := spreadOf(values(rows, func(r row) float64 { return r.CPU[p] }))
				if v.hi == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", v.med)
			}
			reads := "-"
			if d := sum(rows, func(r row) int { return r.Decisions }); d > 0 {
				reads = fmt.Sprintf("%.2f (%d)", float64(sum(rows, func(r row) int { return r.Reads }))/float64(d), sum(rows, func(r row) int { return r.Fallbacks }))
			}
			fmt.Fprintf(&w, "| %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %s | %d | %d |\n",
				size, m.name, spreadOf(values(rows, func(r row) float64 { return float64(r.Signals) })).med,
				spreadOf(values(rows, func(r row) float64 { return r.PerSecond })).f("%.0f"),
				spreadOf(paired(rows, base, perSecond)).f("%.2f"), xBare,
				cpu("kube-apiserver"), cpu("etcd"), cpu("rrguard"), cpu("bare"), cpu("load generator"),
				spreadOf(values(rows, func(r row) float64 { return r.APIPerSig })).med, reads,
				sum(rows, func(r row) int { return r.Duplicates }), sum(rows, func(r row) int { return r.Errors }))
		}
	}

	w.WriteString("\n### Latency at 1 creator\n\n")
	w.WriteString("| mode | signals/row | p50 ms | p99 ms | p50 − baseline | p99 − baseline |\n|---|---:|---:|---:|---:|---:|\n")
	base := b.pick("latency", baseline.name, 0)
	for _, m := range []mode{baseline, bare, rrguard} {
		rows := b.pick("latency", m.name, 0)
		fmt.Fprintf(&w, "| %s | %.0f | %s | %s | %s | %s |\n", m.name,
			spreadOf(values(rows, func(r row) float64 { return float64(r.Signals) })).med,
			spreadOf(values(rows, func(r row) float64 { return r.P50 })).f("%.1f"),
			spreadOf(values(rows, func(r row) float64 { return r.P99 })).f("%.1f"),
			spreadOf(paired(rows, base, func(x, y row) float64 { return x.P50 - y.P50 })).f("%+.1f"),
			spreadOf(paired(rows, base, func(x, y row) float64 { return x.P99 - y.P99 })).f("%+.1f"))
	}

	w.WriteString("\n### Storm: one fingerprint, 64 senders\n\n")
	w.WriteString("rrguard's senders go through package creator, from one process (one Creator: repeats coalesce into shared status writes) or from four (four Creators in the load generator, each coalescing on its own and contending with the others); the Lease lock's are 64 Gateway pods. Landed: signals that ended in an RR or a recorded repeat (the rest returned an error: Kubernaut's Gateway gives up on a status write after a few conflicts). × lease-lock compares signals landed per second. API requests per signal are counted at the load generator's transport.\n\n")
	w.WriteString("| mode | signals/row | signals/s | landed/s | × lease-lock | p99 ms | API req/signal | kube-apiserver CPU ms/signal | RRs stored | signals counted / landed | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	leaseStorm := b.pick("storm", lease.name, 0)
	for _, st := range stormRows {
		rows := b.pick(st.kind, st.mode, 0)
		fmt.Fprintf(&w, "| %s | %.0f | %s | %s | %s | %s | %s | %.2f | %d | %d / %d | %d |\n", st.label,
			spreadOf(values(rows, func(r row) float64 { return float64(r.Signals) })).med,
			spreadOf(values(rows, func(r row) float64 { return r.PerSecond })).f("%.0f"),
			spreadOf(values(rows, landedPerSecond)).f("%.0f"),
			spreadOf(paired(rows, leaseStorm, func(x, y row) float64 { return landedPerSecond(x) / landedPerSecond(y) })).f("%.1f"),
			spreadOf(values(rows, func(r row) float64 { return r.P99 })).f("%.0f"),
			spreadOf(values(rows, func(r row) float64 { return r.APIPerSig })).f("%.2f"),
			spreadOf(values(rows, func(r row) float64 { return r.CPU["kube-apiserver"] })).med,
			sum(rows, func(r row) int { return r.Stored }),
			sum(rows, func(r row) int { return r.Counted }), sum(rows, func(r row) int { return r.Signals - r.Errors }),
			sum(rows, func(r row) int { return r.Errors }))
	}

	w.WriteString("\n### rrguard's memory (one replica, RRs of Kubernaut's size in the namespace it watches)\n\n")
	w.WriteString("| RRs | ready after start (s) | live heap after GC (MB) | per RR over the empty heap (bytes) | RSS (MB) | peak RSS since start (MB) |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range b.memory {
		per := "-"
		if m.RRs > 0 && len(b.memory) > 0 {
			per = fmt.Sprintf("%.0f", (m.LiveHeapMB-b.memory[0].LiveHeapMB)*(1<<20)/float64(m.RRs))
		}
		fmt.Fprintf(&w, "| %d | %.1f | %.1f | %s | %.1f | %.1f |\n", m.RRs, m.StartSeconds, m.LiveHeapMB, per, m.RSSMB, m.PeakRSSMB)
	}
	w.WriteString("\n" + b.targets())
	return w.String()
}

func sum(rows map[int]row, f func(row) int) int {
	n := 0
	for _, r := range rows {
		n += f(r)
	}
	return n
}

// targets checks the run against issue 11's and issue 13's targets.
func (b *bench) targets() string {
	var w strings.Builder
	w.WriteString("### Against the targets\n\n| target | measured (median of rounds) | met |\n|---|---|---|\n")
	line := func(target, measured string, ok bool) {
		met := "yes"
		if !ok {
			met = "**no**"
		}
		fmt.Fprintf(&w, "| %s | %s | %s |\n", target, measured, met)
	}
	ratioAt := map[int]float64{}
	for _, size := range b.cfg.sizes {
		if size != 0 && size != 50000 {
			continue
		}
		base, bareRows, rr := b.pick("throughput", baseline.name, size), b.pick("throughput", bare.name, size), b.pick("throughput", rrguard.name, size)
		xb := spreadOf(paired(rr, base, perSecond)).med
		ratioAt[size] = xb
		line(fmt.Sprintf("%d RRs: rrguard ≥ 0.75x baseline", size), fmt.Sprintf("%.2fx", xb), xb >= 0.75)
		xbare := spreadOf(paired(rr, bareRows, perSecond)).med
		line(fmt.Sprintf("%d RRs: within 5%% of the bare webhook", size), fmt.Sprintf("%.2fx", xbare), xbare >= 0.95)
		cpu := spreadOf(paired(rr, base, func(x, y row) float64 { return x.CPU["kube-apiserver"] / y.CPU["kube-apiserver"] })).med
		line(fmt.Sprintf("%d RRs: kube-apiserver CPU per create ≤ 1.35x baseline", size), fmt.Sprintf("%.2fx", cpu), cpu <= 1.35)
	}
	if a, ok := ratioAt[0]; ok {
		if c, ok := ratioAt[50000]; ok {
			d := (c - a) / a
			line("flat from 0 to 50k RRs (< 10%)", fmt.Sprintf("%+.0f%% (× baseline %.2f → %.2f)", 100*d, a, c), d > -0.10 && d < 0.10)
		}
	}
	base, rr := b.pick("latency", baseline.name, 0), b.pick("latency", rrguard.name, 0)
	p50 := spreadOf(paired(rr, base, func(x, y row) float64 { return x.P50 - y.P50 })).med
	p99 := spreadOf(paired(rr, base, func(x, y row) float64 { return x.P99 - y.P99 })).med
	line("1 creator: p50 ≤ baseline + 2 ms", fmt.Sprintf("%+.1f ms", p50), p50 <= 2)
	line("1 creator: p99 ≤ baseline + 5 ms", fmt.Sprintf("%+.1f ms", p99), p99 <= 5)
	leaseStorm := b.pick("storm", lease.name, 0)
	for _, st := range stormRows[:2] {
		rows := b.pick(st.kind, st.mode, 0)
		x := spreadOf(paired(rows, leaseStorm, func(x, y row) float64 { return landedPerSecond(x) / landedPerSecond(y) })).med
		line(st.label+": ≥ 10x the Lease lock's signals landed per second", fmt.Sprintf("%.1fx", x), x >= 10)
		dups := sum(rows, func(r row) int { return r.Duplicates })
		exact := len(rows) > 0
		worstReq, worstP99 := 0.0, 0.0
		for _, r := range rows {
			exact = exact && r.Counted == r.Signals && r.Errors == 0 && r.Stored == 1
			worstReq, worstP99 = max(worstReq, r.APIPerSig), max(worstP99, r.P99)
		}
		line(st.label+": 0 duplicates, exact counts in every round", fmt.Sprintf("%d duplicates; exact: %v", dups, exact), dups == 0 && exact)
		line(fmt.Sprintf("%s: ≤ %.1f API requests per signal (worst round)", st.label, st.maxReq), fmt.Sprintf("%.2f", worstReq), worstReq <= st.maxReq)
		line(st.label+": p99 per signal < 1 s (worst round)", fmt.Sprintf("%.0f ms", worstP99), worstP99 < 1000)
	}
	for _, m := range b.memory {
		if m.RRs == 100000 {
			line("live heap ≤ 40 MB at 100k RRs", fmt.Sprintf("%.1f MB", m.LiveHeapMB), m.LiveHeapMB <= 40)
		}
	}
	return w.String()
}

// replaceSection puts text between the bench markers of doc, keeping the prose around it.
func replaceSection(doc, text string) error {
	b, err := os.ReadFile(doc)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", doc, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + text + s[j:]
	return os.WriteFile(doc, []byte(s), 0o644)
}
