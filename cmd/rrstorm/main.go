// Command rrstorm is a load generator that behaves like N Gateway replicas: it sends signals
// through package creator against the cluster of the current kubeconfig, prints progress, and
// ends with a summary and a consistency check of the namespace (per fingerprint at most one RR in
// flight; the sum of occurrenceCount equal to the signals sent). Use a namespace of its own: the
// check reads every RR in it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/kubernaut/storm"
)

func main() {
	ns := flag.String("namespace", "rrstorm", "namespace to send RemediationRequests to (must exist)")
	signals := flag.Int("signals", 1000, "signals to send")
	fps := flag.Int("fingerprints", 50, "distinct fingerprints the signals fall on")
	replicas := flag.Int("replicas", 64, "concurrent senders (Gateway replicas x workers)")
	processes := flag.Int("processes", 1, "creator processes the senders are spread over (each coalesces its own repeats)")
	attempts := flag.Int("max-attempts", 20, "creates per signal before giving up on transient errors")
	flag.Parse()

	cfg, err := ctrl.GetConfig()
	if err != nil {
		fail(err)
	}
	cfg.QPS, cfg.Burst = -1, -1
	c, err := client.New(cfg, client.Options{Scheme: cluster.Scheme()})
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	run := fmt.Sprintf("%d", time.Now().UnixNano())
	fingerprints := make([]string, *fps)
	for i := range fingerprints {
		fingerprints[i] = rules.HashKey(fmt.Sprintf("rrstorm/%s/%d", run, i))
	}
	s := storm.Run(ctx, c, storm.Options{
		Namespace: *ns, Fingerprints: fingerprints, Signals: *signals, Workers: *replicas, Processes: *processes,
		Creator: creator.Options{MaxAttempts: *attempts},
		Progress: func(done, total int) {
			fmt.Fprintf(os.Stderr, "\r%d/%d signals landed", done, total)
		},
	})
	fmt.Fprintln(os.Stderr)
	fmt.Println(s)
	k, err := storm.Check(ctx, c, *ns, s.PerFP)
	if err != nil {
		fail(err)
	}
	fmt.Println(k)
	counted := 0
	for fp := range s.PerFP {
		counted += k.CountPerFP[fp]
	}
	switch {
	case k.Duplicates > 0:
		fmt.Printf("FAIL: %d duplicate RRs in flight\n", k.Duplicates)
		os.Exit(1)
	case counted < s.Created+s.Repeats:
		fmt.Printf("FAIL: occurrenceCount %d < %d signals landed\n", counted, s.Created+s.Repeats)
		os.Exit(1)
	case counted > s.Sent:
		fmt.Printf("occurrenceCount %d exceeds signals sent by %d (ambiguous writes: %d)\n", counted, counted-s.Sent, s.Ambiguous)
	}
	if s.Lost() > 0 {
		fmt.Printf("FAIL: %d signals did not land\n", s.Lost())
		os.Exit(1)
	}
	fmt.Println("OK: every signal landed once; no duplicate RR in flight")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "rrstorm:", err)
	os.Exit(1)
}
