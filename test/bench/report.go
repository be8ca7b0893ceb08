package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

const (
	beginMarker = "<!-- bench:begin -->"
	endMarker   = "<!-- bench:end -->"
)

func markdown(rows []result, elapsed time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Run of %s on %s: %d CPUs (GOMAXPROCS %d), %s, kube-apiserver %s and etcd 3.6.16 on loopback; %s in all.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(),
		"1.37.2", elapsed.Round(time.Second))
	b.WriteString("| existing RRs | creators | fingerprints | mode | signals | creates/s | × baseline | p50 ms | p99 ms | max ms | API req/signal | RRs stored | duplicates | errors |\n")
	b.WriteString("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %d | %s (%d) | %s | %d | %.0f | %.2f | %.1f | %.1f | %.1f | %.2f | %d | %d | %d |\n",
			r.Size, r.Creators, r.Spread, r.Fingerprint, r.Mode, r.Signals, r.PerSecond, r.Ratio, r.P50, r.P99, r.Max,
			r.APIPerSig, r.Stored, r.Duplicates, r.Errors)
	}
	return b.String()
}

// replaceSection puts table between the bench markers of doc, keeping the prose around it.
func replaceSection(doc, table string) error {
	b, err := os.ReadFile(doc)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", doc, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + table + s[j:]
	return os.WriteFile(doc, []byte(s), 0o644)
}
