// Command reads is `make bench-reads`: what a consistent read of one key's objects costs, with the
// namespace holding N objects (default 10,000): for RRs of Kubernaut's size, by field selector
// (the CRD declares spec.signalFingerprint selectable) and by the namespace scan (it does not);
// for PipelineRuns under the Tekton sample policy, by label selector (its key is two labels) and
// by the namespace scan a key not made of labels alone gets. Rows of reads,
// interleaved round by round, report reads per second, latency and CPU milliseconds per read of
// kube-apiserver, etcd and this process (the reader, which decodes what it is sent).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

func main() {
	n := flag.Int("rrs", 10000, "RRs of Kubernaut's size in the namespace")
	reads := flag.Int("reads", 20, "reads per row at least; a row also lasts at least -row-time")
	rowTime := flag.Duration("row-time", 10*time.Second, "the shortest row")
	rounds := flag.Int("rounds", 3, "interleaved rounds")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err := run(*n, *reads, *rounds, *rowTime); err != nil {
		fmt.Fprintln(os.Stderr, "bench-reads:", err)
		os.Exit(1)
	}
}

type row struct {
	perSec, p50, p99      float64 // reads/s, ms
	apiMS, etcdMS, selfMS float64
}

func run(n, minReads, rounds int, rowTime time.Duration) error {
	ctx := context.Background()
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	env, err := testenv.Start(testenv.Options{ExtraCRDs: []string{filepath.Join(root, "test", "integration", "policies", "testdata", "crds")}})
	if err != nil {
		return err
	}
	defer env.Stop()
	pids, err := testenv.ControlPlane()
	if err != nil {
		return err
	}
	m := measure{minReads: minReads, rounds: rounds, rowTime: rowTime, pids: pids}

	// RRs: by the fingerprint's field selector, or a scan for a CRD that does not declare it.
	ns, err := env.Namespace(ctx, "bench-reads")
	if err != nil {
		return err
	}
	start := time.Now()
	if err := testenv.Fill(ctx, env.Client, ns, 0, n, true); err != nil {
		return err
	}
	fmt.Printf("%d RRs of Kubernaut's size in %s in %s\n", n, ns, time.Since(start).Round(time.Second))
	rrReaders := map[string]*rrfacts.Index{}
	for _, mode := range []string{"selector", "scan"} {
		if rrReaders[mode], err = testenv.RRReader(env.Config, mode != "scan"); err != nil {
			return err
		}
	}
	if err := m.table(ctx, fmt.Sprintf("%d RRs", n), []string{"selector", "scan"}, rrReaders, ns, func(k int) string {
		return testenv.Fingerprint(ns + "/fill/" + strconv.Itoa((k*7919)%n))
	}, func(key string) string { return key }); err != nil {
		return err
	}

	// PipelineRuns under the Tekton sample policy: by label selector (its key is two labels), or
	// the namespace scan a key not made of labels alone gets.
	prNS, err := env.Namespace(ctx, "bench-reads-pr")
	if err != nil {
		return err
	}
	start = time.Now()
	var failed atomic.Int64
	testenv.Parallel(n, 32, func(i int) {
		if err := env.Client.Create(ctx, pipelineRun(prNS, i)); err != nil {
			failed.Add(1)
		}
	})
	if failed.Load() > 0 {
		return fmt.Errorf("%d PipelineRuns not created", failed.Load())
	}
	fmt.Printf("\n%d PipelineRuns of about 2 KB in %s in %s\n", n, prNS, time.Since(start).Round(time.Second))
	prReaders, err := pipelineRunReaders(env, root)
	if err != nil {
		return err
	}
	return m.table(ctx, fmt.Sprintf("%d PipelineRuns", n), []string{"label-selector", "scan"}, prReaders, prNS, func(k int) string {
		return fmt.Sprintf("repo-%d/main", (k*7919)%n)
	}, rules.HashKey)
}

// measure reads keys in interleaved rounds and reports each read mode's rows.
type measure struct {
	minReads, rounds int
	rowTime          time.Duration
	pids             map[string]int
}

func (m measure) table(ctx context.Context, what string, modes []string, readers map[string]*rrfacts.Index, ns string,
	key func(k int) string, keyHex func(key string) string) error {
	results := map[string][]row{}
	for r := range m.rounds {
		for i := range modes {
			mode := modes[(i+r)%len(modes)]
			l := readers[mode]
			var lat []float64
			cpu0 := testenv.CPUMillis(m.pids)
			w0 := time.Now()
			for k := 0; k < m.minReads || time.Since(w0) < m.rowTime; k++ {
				kk := key(k)
				t0 := time.Now()
				got, err := l.ReadKey(ctx, ns, keyHex(kk), kk)
				if err != nil {
					return err
				}
				if len(got) != 1 {
					return fmt.Errorf("%s read of key %q found %d objects, want 1", mode, kk, len(got))
				}
				lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
			}
			wall := time.Since(w0)
			cpu1 := testenv.CPUMillis(m.pids)
			reads := len(lat)
			slices.Sort(lat)
			per := func(k string) float64 { return float64(cpu1[k]-cpu0[k]) / float64(reads) }
			rw := row{perSec: float64(reads) / wall.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
				apiMS: per("kube-apiserver"), etcdMS: per("etcd"), selfMS: per("self")}
			results[mode] = append(results[mode], rw)
			fmt.Printf("round %d %-14s %7.1f reads/s p50 %7.1f ms p99 %7.1f ms  CPU ms/read: apiserver %.1f etcd %.1f reader %.1f\n",
				r+1, mode, rw.perSec, rw.p50, rw.p99, rw.apiMS, rw.etcdMS, rw.selfMS)
		}
	}
	fmt.Printf("\n%s, rows of at least %d reads and %s, %d rounds; median (range); ratio paired per round against %s\n\n", what, m.minReads, m.rowTime, m.rounds, modes[0])
	fmt.Printf("| read | reads/s | p50 ms | p99 ms | apiserver CPU ms/read | etcd | reader | apiserver CPU / %s |\n", modes[0])
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, mode := range modes {
		rs := results[mode]
		f := func(get func(row) float64) string {
			xs := make([]float64, len(rs))
			for i := range rs {
				xs[i] = get(rs[i])
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.1f (%.1f-%.1f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		xs := make([]float64, len(rs))
		for i := range rs {
			xs[i] = rs[i].apiMS / results[modes[0]][i].apiMS
		}
		slices.Sort(xs)
		ratio := fmt.Sprintf("%.2fx (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", mode, f(func(r row) float64 { return r.perSec }),
			f(func(r row) float64 { return r.p50 }), f(func(r row) float64 { return r.p99 }),
			f(func(r row) float64 { return r.apiMS }), f(func(r row) float64 { return r.etcdMS }), f(func(r row) float64 { return r.selfMS }), ratio)
	}
	return nil
}

// pipelineRun is the i-th PipelineRun of the fill: key repo-<i>/main, about 2 KB.
func pipelineRun(ns string, i int) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{"pipelineRef": map[string]any{"name": "build"},
			"params": []any{map[string]any{"name": "payload", "value": strings.Repeat("p", 1800)}}},
		"status": map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "Unknown"}}},
	}}
	u.SetAPIVersion("tekton.dev/v1")
	u.SetKind("PipelineRun")
	u.SetNamespace(ns)
	u.SetName(fmt.Sprintf("run-%d", i))
	u.SetLabels(map[string]string{"ci.example.com/repo": fmt.Sprint("repo-", i), "ci.example.com/branch": "main"})
	return u
}

// pipelineRunReaders are indexes (never started) of the Tekton sample policy, for its consistent
// read: as shipped (label selector), and with a key that reads the same labels through has(),
// which makes the read a namespace scan.
func pipelineRunReaders(env *testenv.Env, root string) (map[string]*rrfacts.Index, error) {
	b, err := os.ReadFile(filepath.Join(root, "config", "samples", "tekton-pipelinerun.yaml"))
	if err != nil {
		return nil, err
	}
	out := map[string]*rrfacts.Index{}
	for mode, key := range map[string]string{
		"label-selector": "",
		"scan":           "has(object.metadata.labels.nothing) ? 'x' : object.metadata.labels['ci.example.com/repo'] + '/' + object.metadata.labels['ci.example.com/branch']",
	} {
		p, err := policy.ReadPolicy(b)
		if err != nil {
			return nil, err
		}
		if key != "" {
			p.Spec.Key.Expression = key
		}
		c, err := policy.Compile(p, "")
		if err != nil {
			return nil, err
		}
		if out[mode], err = rrfacts.New(env.Config, rrfacts.Options{Policy: c, Kind: schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"},
			MarkKey: marks.EntryKey}); err != nil {
			return nil, err
		}
		if out[mode].ReadMode() != map[string]rrguardv1.ConsistentRead{"label-selector": rrguardv1.ReadLabelSelector, "scan": rrguardv1.ReadNamespaceScan}[mode] {
			return nil, fmt.Errorf("%s: the reader reads by %s", mode, out[mode].ReadMode())
		}
	}
	return out, nil
}
