// Command bench is `make bench` (and `make bench-quick`): RR creates on a real control plane, in
// interleaved rounds, with rrguard and a bare webhook each in a process of their own so that the
// CPU each process spends per signal can be read from /proc:
//
//   - baseline: a plain create, no webhook;
//   - bare: a plain create through the cheapest webhook that names an RR (test/bench/bare), the
//     limit for any webhook on this machine;
//   - rrguard: creator.CreateOrRecord through rrguard (the built cmd/rrguard, production timings);
//   - lease-lock: Kubernaut's Gateway today (test/gateway).
//
// Throughput rows (new fingerprints, 32 creators) at 0, 10k and 50k existing RRs; latency rows at
// 1 creator; storm rows (one fingerprint, 64 senders) for rrguard and the Lease lock; memory rows
// (rrguard's live heap, RSS and start-up with 0, 10k, 50k and 100k RRs of Kubernaut's size). Ratios
// are paired per round, reported as median and range.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/test/testenv"
)

// benchLabel on a namespace puts one webhook in its path (see mode.label).
const benchLabel = "rrguard-bench"

type config struct {
	quick, memoryOnly           bool
	rounds, creators, signals   int
	rowTime                     time.Duration
	sizes, memSizes             []int
	latencySignals, stormSignal int
	out, doc                    string
	binDir                      string // bin/bench of the checkout when empty
	profile                     bool
	// queueKeys: the key counts of the Queue latency rows of -policy.
	queueKeys []int
}

func main() {
	var c config
	quick := flag.Bool("quick", false, "the short run: one size, shorter rows, memory at 0 and 5k (about 6 minutes)")
	flag.IntVar(&c.rounds, "rounds", 3, "interleaved rounds")
	flag.IntVar(&c.creators, "creators", 32, "concurrent creators in throughput rows")
	flag.IntVar(&c.signals, "signals", 3000, "signals per throughput row (a row also ends after -row-time)")
	flag.DurationVar(&c.rowTime, "row-time", 30*time.Second, "longest a row runs")
	sizes := flag.String("sizes", "0,10000,50000", "RRs already in the namespace, per throughput size")
	memSizes := flag.String("memory", "0,10000,50000,100000", "RRs rrguard watches in the memory rows")
	flag.IntVar(&c.latencySignals, "latency-signals", 1000, "signals per 1-creator latency row")
	flag.IntVar(&c.stormSignal, "storm-signals", 2000, "signals per storm row (one fingerprint, 64 senders)")
	flag.BoolVar(&c.profile, "profile", false, "write 8 s CPU profiles of kube-apiserver and rrguard, taken during the first rrguard throughput row (with -policy: the first round's rows of each webhook, as *-<mode>.pprof), to bin/bench/*.pprof")
	flag.StringVar(&c.out, "out", "bin/bench/results.json", "where to write every row as JSON")
	flag.StringVar(&c.doc, "doc", "docs/benchmarks.md", "Markdown file whose results section is replaced (empty: none)")
	flag.BoolVar(&c.memoryOnly, "memory-only", false, "only the memory rows: rrguard started with -memory RRs already there, time to ready, live heap, RSS and peak RSS")
	policyOnly := flag.Bool("policy", false, "only the generic target's rows (make bench-policy): PipelineRuns under the Tekton sample policy against no webhook, and rrguard's heap per PipelineRun")
	policyObjects := flag.Int("policy-objects", 100000, "PipelineRuns in rrguard's index for the memory row of -policy (0: none)")
	queueKeys := flag.String("queue-keys", "1,100,1000", "keys (queues of 10 PipelineRuns each) of the Queue latency rows of -policy")
	flag.Parse()
	c.quick = *quick
	c.sizes, c.memSizes, c.queueKeys = parseInts(*sizes), parseInts(*memSizes), parseInts(*queueKeys)
	if c.quick {
		c.sizes, c.memSizes = []int{0}, []int{0, 5000}
		c.signals, c.rowTime, c.latencySignals, c.stormSignal = 1500, 10*time.Second, 300, 1000
	}
	ctrl.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel)))
	if *policyOnly {
		if _, err := runPolicyBench(c, *policyObjects); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(c); err != nil {
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

// bench is one run: the control plane, the two webhook processes, and the load generator's client.
type bench struct {
	cfg            config
	env            *testenv.Env
	c              client.Client
	requests       testenv.Requests
	api, etcd      int
	rrguard        *server
	bare           *server
	rrguardFn      func(namespaces string) (*server, error)
	rows           []row
	memory         []memRow
	binDir         string
	rrguardPprof   string
	rrguardMetrics string
	queueLatency   []queueLatencyRow
}

// chartGoMemLimit is the chart's goMemLimit: rrguard runs here as deployed.
const chartGoMemLimit = "200MiB"

func run(cfg config) error {
	began := time.Now()
	b, err := runBench(cfg)
	if err != nil {
		return err
	}
	elapsed := time.Since(began)
	if err := os.MkdirAll(filepath.Dir(cfg.out), 0o755); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(map[string]any{"rows": b.rows, "memory": b.memory}, "", "  ")
	if err := os.WriteFile(cfg.out, j, 0o644); err != nil {
		return err
	}
	report := b.markdown(elapsed)
	fmt.Println()
	fmt.Print(report)
	if cfg.doc != "" {
		return replaceSection(cfg.doc, report)
	}
	return nil
}

// runBench runs every row and returns what they measured.
func runBench(cfg config) (*bench, error) {
	ctx := context.Background()
	root, err := testenv.Root()
	if err != nil {
		return nil, err
	}
	binDir := cfg.binDir
	if binDir == "" {
		binDir = filepath.Join(root, "bin", "bench")
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	rrguardBin, err := build(root, binDir, "./cmd/rrguard", "rrguard")
	if err != nil {
		return nil, err
	}
	bareBin, err := build(root, binDir, "./test/bench/bare", "bare")
	if err != nil {
		return nil, err
	}
	env, err := testenv.Start(testenv.Options{Webhooks: true})
	if err != nil {
		return nil, err
	}
	defer env.Stop()
	b := &bench{cfg: cfg, env: env, binDir: binDir}
	if b.api, err = testenv.ChildPID("kube-apiserver"); err != nil {
		return nil, err
	}
	if b.etcd, err = testenv.ChildPID("etcd"); err != nil {
		return nil, err
	}
	if b.c, err = client.New(testenv.Counting(env.Config, &b.requests), client.Options{Scheme: env.Client.Scheme()}); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(binDir, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return nil, err
	}
	w := env.Environment().WebhookInstallOptions

	// rrguard, as deployed: its own process, production timings, watching the namespaces given.
	b.rrguardFn = func(namespaces string) (*server, error) {
		probe, err := freeAddr()
		if err != nil {
			return nil, err
		}
		pprof, err := freeAddr()
		if err != nil {
			return nil, err
		}
		b.rrguardPprof = pprof
		metrics, err := freeAddr()
		if err != nil {
			return nil, err
		}
		b.rrguardMetrics = metrics
		args := append([]string{"--webhook-host=127.0.0.1", "--webhook-port=" + strconv.Itoa(w.LocalServingPort), "--cert-dir=" + w.LocalServingCertDir,
			"--metrics-bind-address=" + metrics, "--metrics-secure=false", "--health-probe-bind-address=" + probe, "--pprof-bind-address=" + pprof,
			"--shutdown-delay=0s", "--rr-namespaces=" + namespaces,
			// The load generator sends hundreds of creates a second; the default client limit
			// (200 QPS) is for a replica among three in a cluster.
			"--kube-api-qps=5000", "--kube-api-burst=10000"}, releaseTimings...)
		return start(ctx, "rrguard", rrguardBin, []string{"KUBECONFIG=" + kubeconfig, "POD_NAMESPACE=" + testenv.MarksNamespace, "GOMEMLIMIT=" + chartGoMemLimit},
			httpReady("http://"+probe+"/readyz"), pprof, args...)
	}
	bareAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, barePort, _ := strings.Cut(bareAddr, ":")
	if b.bare, err = start(ctx, "bare", bareBin, nil, tlsReady(bareAddr), "",
		"--port="+barePort, "--cert-dir="+w.LocalServingCertDir); err != nil {
		return nil, err
	}
	defer b.bare.stop()
	if err := b.routeWebhooks(ctx, bareAddr); err != nil {
		return nil, err
	}

	for _, size := range cfg.sizes {
		if cfg.memoryOnly {
			break
		}
		if err := b.throughput(ctx, size); err != nil {
			return nil, err
		}
	}
	if !cfg.memoryOnly {
		if err := b.latencyAndStorm(ctx); err != nil {
			return nil, err
		}
	}
	if err := b.memoryRows(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// routeWebhooks puts rrguard in the path of namespaces labelled rrguard, the bare webhook in
// that of namespaces labelled bare, and the naming policy over both.
func (b *bench) routeWebhooks(ctx context.Context, bareAddr string) error {
	only := func(v ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: benchLabel, Operator: metav1.LabelSelectorOpIn, Values: v}}}
	}
	if err := b.env.JudgeOnly(ctx, only("rrguard", "bare")); err != nil {
		return err
	}
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := b.env.Client.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
		return err
	}
	bareCfg := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "bench-bare"}}
	for _, wh := range m.Webhooks {
		wh.Name = "bare.bench.kubernaut.ai"
		u := "https://" + bareAddr + "/mutate-remediationrequest"
		wh.ClientConfig.URL = &u
		wh.NamespaceSelector = only("bare")
		bareCfg.Webhooks = append(bareCfg.Webhooks, wh)
	}
	for i := range m.Webhooks {
		m.Webhooks[i].NamespaceSelector = only("rrguard")
	}
	if err := b.env.Client.Update(ctx, &m); err != nil {
		return err
	}
	return b.env.Client.Create(ctx, bareCfg)
}

// namespace creates a namespace holding size RRs (created before any webhook judges it, with
// Kubernaut's own naming), then labels it for mode m.
func (b *bench) namespace(ctx context.Context, prefix string, size int, m mode) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := b.env.Client.Create(ctx, ns); err != nil {
		return "", err
	}
	if size > 0 {
		fmt.Printf("creating %d RRs in %s ...\n", size, ns.Name)
		if err := testenv.Fill(ctx, b.env.Client, ns.Name, 0, size, false); err != nil {
			return "", err
		}
	}
	if m.label != "" {
		ns.Labels = map[string]string{benchLabel: m.label}
		if err := b.env.Client.Update(ctx, ns); err != nil {
			return "", err
		}
	}
	return ns.Name, nil
}

// namespaces makes the namespaces of a set of rows, by mode: baseline and lease-lock share one
// holding size RRs, rrguard has its own of that size, bare gets an empty one (it reads nothing).
// It starts an rrguard replica watching rrguard's namespace; the caller stops it.
func (b *bench) namespaces(ctx context.Context, prefix string, size int) (map[string]string, error) {
	plain, err := b.namespace(ctx, prefix+"-plain", size, baseline)
	if err != nil {
		return nil, err
	}
	guarded, err := b.namespace(ctx, prefix+"-rrguard", size, rrguard)
	if err != nil {
		return nil, err
	}
	bareNS, err := b.namespace(ctx, prefix+"-bare", 0, bare)
	if err != nil {
		return nil, err
	}
	if b.rrguard, err = b.rrguardFn(guarded); err != nil {
		return nil, err
	}
	for _, ns := range []string{guarded, bareNS} {
		if err := b.env.WaitJudged(ctx, ns, true); err != nil {
			b.rrguard.stop()
			return nil, err
		}
	}
	return map[string]string{baseline.name: plain, lease.name: plain, rrguard.name: guarded, bare.name: bareNS}, nil
}

// throughput runs the 32-creator rows at one namespace size: every mode once per round, the order
// rotating from round to round.
func (b *bench) throughput(ctx context.Context, size int) error {
	nsOf, err := b.namespaces(ctx, fmt.Sprintf("bench-%d", size), size)
	if err != nil {
		return err
	}
	defer func() { b.rrguard.stop(); b.rrguard = nil }()
	modes := []mode{baseline, bare, rrguard, lease}
	for round := range b.cfg.rounds {
		for i := range modes {
			m := modes[(i+round)%len(modes)]
			sp := spec{kind: "throughput", m: m, ns: nsOf[m.name], size: size, round: round,
				creators: b.cfg.creators, signals: b.cfg.signals, maxTime: b.cfg.rowTime}
			if b.cfg.profile && round == 0 && size == b.cfg.sizes[0] && m.name == rrguard.name {
				sp.during = func() { b.profiles("") }
			}
			r, err := b.runRow(ctx, sp)
			if err != nil {
				return err
			}
			b.rows = append(b.rows, r)
		}
	}
	return nil
}

// latencyAndStorm runs the 1-creator rows and the storm rows in empty namespaces.
func (b *bench) latencyAndStorm(ctx context.Context) error {
	nsOf, err := b.namespaces(ctx, "bench-latency", 0)
	if err != nil {
		return err
	}
	defer func() { b.rrguard.stop(); b.rrguard = nil }()
	latency := []mode{baseline, bare, rrguard}
	// A storm row sends one fingerprint from 64 goroutines; rrguard's from one process and from
	// four (four Creators), the Lease lock's from 64 Gateway pods.
	type stormRow struct {
		kind      string
		m         mode
		processes int
	}
	storm := []stormRow{{"storm", rrguard, 1}, {"storm-4p", rrguard, 4}, {"storm", lease, 1}}
	for round := range b.cfg.rounds {
		for i := range latency {
			m := latency[(i+round)%len(latency)]
			r, err := b.runRow(ctx, spec{kind: "latency", m: m, ns: nsOf[m.name], round: round,
				creators: 1, signals: b.cfg.latencySignals, maxTime: b.cfg.rowTime})
			if err != nil {
				return err
			}
			b.rows = append(b.rows, r)
		}
		for i := range storm {
			sr := storm[(i+round)%len(storm)]
			r, err := b.runRow(ctx, spec{kind: sr.kind, m: sr.m, ns: nsOf[sr.m.name], round: round, processes: sr.processes,
				creators: 64, signals: b.cfg.stormSignal, maxTime: b.cfg.rowTime, oneFingerprint: true})
			if err != nil {
				return err
			}
			b.rows = append(b.rows, r)
		}
	}
	return nil
}

// profiles writes 8 s CPU profiles of kube-apiserver and rrguard, taken at once, to
// bin/bench/<process>.pprof, or <process>-<tag>.pprof when tagged.
func (b *bench) profiles(tag string) {
	hc, err := rest.HTTPClientFor(b.env.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	var wg sync.WaitGroup
	for name, url := range map[string]string{
		"kube-apiserver": strings.TrimSuffix(b.env.Config.Host, "/") + "/debug/pprof/profile?seconds=8",
		"rrguard":        "http://" + b.rrguardPprof + "/debug/pprof/profile?seconds=8",
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := hc
			if name == "rrguard" {
				c = http.DefaultClient
			}
			resp, err := c.Get(url)
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if tag != "" {
				name += "-" + tag
			}
			path := filepath.Join(b.binDir, name+".pprof")
			if err := os.WriteFile(path, body, 0o644); err == nil {
				fmt.Println("wrote", path)
			}
		}()
	}
	wg.Wait()
}
