// Command bench is `make bench`: RR creates on a real control plane, with no webhook (baseline),
// through rrguard, with Kubernaut's Lease lock emulated, and with a bare list-then-create, at
// several namespace sizes, creator counts and fingerprint spreads, interleaved in one process so
// that machine drift falls on every row alike. Ratios to the baseline are the headline.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/test/testenv"
)

const (
	benchLabel = "rrguard-bench"
	cellLabel  = "rrguard-bench-cell"
)

type result struct {
	Size        int     `json:"size"`
	Creators    int     `json:"creators"`
	Spread      string  `json:"spread"`
	Mode        string  `json:"mode"`
	Signals     int     `json:"signals"`
	PerSecond   float64 `json:"createsPerSecond"`
	Ratio       float64 `json:"ratioToBaseline"`
	P50, P99    float64 // milliseconds
	Max         float64
	APIPerSig   float64 `json:"apiRequestsPerSignal"`
	Stored      int     `json:"stored"`
	Duplicates  int     `json:"duplicates"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"firstError,omitempty"`
	Fingerprint int     `json:"fingerprints"`
}

func main() {
	sizes := flag.String("sizes", "0,10000,50000", "RRs already in the namespace")
	creators := flag.String("creators", "1,32,128", "concurrent creators")
	perCell := flag.Int("signals", 0, "signals per row (default max(128, 4 x creators))")
	out := flag.String("out", "bin/bench/results.json", "where to write all rows as JSON")
	doc := flag.String("doc", "docs/benchmarks.md", "Markdown file whose results section is replaced (empty: none)")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel)))
	if err := run(parseInts(*sizes), parseInts(*creators), *perCell, *out, *doc); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: bad number %q\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(sizes, creators []int, perCell int, out, doc string) error {
	start := time.Now()
	env, err := testenv.Start(testenv.Options{Webhooks: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	ctx := context.Background()

	// rrguard judges only namespaces labelled for it, so that every mode runs against one
	// control plane, in one process, side by side.
	if err := env.JudgeOnly(ctx, &metav1.LabelSelector{MatchLabels: map[string]string{benchLabel: "rrguard"}}); err != nil {
		return err
	}
	var requests testenv.Requests
	if _, err := env.ServeRRGuardWith(ctx, testenv.Counting(env.Config, &requests)); err != nil {
		return err
	}
	c, err := client.New(testenv.Counting(env.Config, &requests), client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		return err
	}

	var results []result
	cell := 0
	for _, size := range sizes {
		plain, guarded, err := namespaces(ctx, env, size)
		if err != nil {
			return err
		}
		for _, cr := range creators {
			for _, spread := range []string{"spread", "concentrated"} {
				n := perCell
				if n == 0 {
					n = max(128, 4*cr)
				}
				if size == 0 {
					// Fresh namespaces per row: "0 existing" must stay near 0.
					if plain, guarded, err = namespaces(ctx, env, 0); err != nil {
						return err
					}
				}
				// Rotate the order of modes from row to row: drift cannot favour one mode.
				order := slices.Clone(modes)
				for i := range cell % len(order) {
					_ = i
					order = append(order[1:], order[0])
				}
				row := map[string]result{}
				for _, m := range order {
					ns := plain
					if m.webhook {
						ns = guarded
					}
					cell++
					r, err := runCell(ctx, c, &requests, m, ns, size, cr, spread, n, cell)
					if err != nil {
						return err
					}
					row[m.name] = r
					fmt.Printf("size=%-6d creators=%-4d %-12s %-12s %7.0f/s p50=%6.1fms p99=%7.1fms api/sig=%5.2f stored=%-5d dup=%-4d err=%d\n",
						size, cr, spread, m.name, r.PerSecond, r.P50, r.P99, r.APIPerSig, r.Stored, r.Duplicates, r.Errors)
				}
				for _, m := range modes {
					r := row[m.name]
					r.Ratio = r.PerSecond / row["baseline"].PerSecond
					results = append(results, r)
				}
			}
		}
	}
	elapsed := time.Since(start)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return err
	}
	table := markdown(results, elapsed)
	fmt.Println()
	fmt.Print(table)
	if doc != "" {
		return replaceSection(doc, table)
	}
	return nil
}

// namespaces makes two namespaces holding size RRs each: one plain, one judged by rrguard.
func namespaces(ctx context.Context, env *testenv.Env, size int) (plain, guarded string, err error) {
	c := env.Client
	for i, label := range []string{"plain", "rrguard"} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: fmt.Sprintf("bench-%d-%s-", size, label)}}
		if err := c.Create(ctx, ns); err != nil {
			return "", "", err
		}
		if size > 0 {
			fmt.Printf("creating %d RRs in %s ...\n", size, ns.Name)
			if err := fill(ctx, c, ns.Name, size); err != nil {
				return "", "", err
			}
		}
		if i == 0 {
			plain = ns.Name
			continue
		}
		ns.Labels = map[string]string{benchLabel: "rrguard"}
		if err := c.Update(ctx, ns); err != nil {
			return "", "", err
		}
		guarded = ns.Name
	}
	if err := env.WaitJudged(ctx, guarded, true); err != nil {
		return "", "", err
	}
	return plain, guarded, env.WaitJudged(ctx, plain, false)
}

// fill creates n RRs of distinct fingerprints, before rrguard judges the namespace.
func fill(ctx context.Context, c client.Client, ns string, n int) error {
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := c.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/fill/"+strconv.Itoa(i)))); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func runCell(ctx context.Context, c client.Client, requests *testenv.Requests, m mode, ns string, size, creators int, spread string, n, cell int) (result, error) {
	fps := n
	if spread == "concentrated" {
		fps = 4
	}
	fingerprints := make([]string, fps)
	for i := range fingerprints {
		fingerprints[i] = testenv.Fingerprint(fmt.Sprintf("%s/cell-%d/%d", ns, cell, i))
	}
	cellID := strconv.Itoa(cell)
	labelled := labelledClient{Client: c, labels: map[string]string{cellLabel: cellID}}

	work := make(chan int, n)
	for i := range n {
		work <- i
	}
	close(work)
	latencies := make([]time.Duration, n)
	var stored, errCount atomic.Int64
	var firstErr atomic.Value
	runtime.GC()
	before := requests.All.Load()
	begin := time.Now()
	var wg sync.WaitGroup
	for w := range creators {
		wg.Add(1)
		pod := fmt.Sprintf("gateway-%d", w)
		go func() {
			defer wg.Done()
			for i := range work {
				t := time.Now()
				created, err := m.signal(ctx, labelled, ns, fingerprints[i%fps], pod)
				latencies[i] = time.Since(t)
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				if created {
					stored.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	apiCalls := requests.All.Load() - before

	// Duplicates: RRs of this row beyond one per fingerprint (none ever leaves flight here).
	var list v1alpha1.RemediationRequestList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{cellLabel: cellID}); err != nil {
		return result{}, err
	}
	perFP := map[string]int{}
	for _, rr := range list.Items {
		perFP[rr.Spec.SignalFingerprint]++
	}
	dups := 0
	for _, k := range perFP {
		dups += k - 1
	}
	if m.name == "baseline" {
		dups = 0 // the baseline deduplicates nothing by design
	}
	slices.Sort(latencies)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	r := result{
		Size: size, Creators: creators, Spread: spread, Mode: m.name, Signals: n, Fingerprint: fps,
		PerSecond: float64(n) / elapsed.Seconds(),
		P50:       ms(latencies[n/2]), P99: ms(latencies[(n*99)/100]), Max: ms(latencies[n-1]),
		APIPerSig: float64(apiCalls) / float64(n),
		Stored:    len(list.Items), Duplicates: dups, Errors: int(errCount.Load()),
	}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	return r, nil
}

// labelledClient stamps the row's label on every RR it creates, to count them afterwards.
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
