package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/test/testenv"
)

// The generic target's rows (`make bench-policy`), interleaved round by round, CPU per create of
// each process:
//   - baseline: PipelineRuns with no webhook;
//   - bare: PipelineRuns through the bare webhook (test/bench/bare), the cost of any webhook call;
//   - rrguard: PipelineRuns through rrguard under the Tekton sample policy;
//   - rrguard-rr: RRs through rrguard under the built-in RR policy, what a PipelineRun's cost is
//     held against (issue 25: within 10%);
//   - rrguard-queue, rrguard-replace: the same PipelineRuns under the Queue and Replace samples
//     (each its own key: held at admission, released once settled);
// then, under Queue, the time from the one in flight ending to the next released at 1, 100 and
// 1,000 keys with queues of 10 (queuelatency.go); then rrguard's live heap per PipelineRun in its
// index at -policy-objects objects.

// policyModes are the rows under the PipelineRun policy, by the sample each uses.
var policyModes = map[string]string{
	"rrguard":         "tekton-pipelinerun.yaml",
	"rrguard-queue":   "tekton-pipelinerun-queue.yaml",
	"rrguard-replace": "tekton-pipelinerun-replace.yaml",
}

type policyRow struct {
	mode                string
	creates             int
	perSec              float64
	apiMS, etcdMS, rrMS float64
	bareMS              float64
	// releaseWait: how long after its last create rrguard took to release what the row stored
	// (its CPU over that wait is in the row's, idle CPU taken out; release.go).
	releaseWait float64
	// createAPIMS and createRRMS are kube-apiserver's and rrguard's CPU up to the row's last
	// create: the create path alone, without the release.
	createAPIMS, createRRMS float64
	errors                  int
}

func runPolicyBench(cfg config, objects int) (b *bench, err error) {
	ctx := context.Background()
	root, err := testenv.Root()
	if err != nil {
		return b, err
	}
	binDir := cfg.binDir
	if binDir == "" {
		binDir = filepath.Join(root, "bin", "bench")
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return b, err
	}
	rrguardBin, err := build(root, binDir, "./cmd/rrguard", "rrguard")
	if err != nil {
		return b, err
	}
	env, err := testenv.Start(testenv.Options{Webhooks: true, ExtraCRDs: []string{filepath.Join(root, "test", "integration", "policies", "testdata", "crds")}})
	if err != nil {
		return b, err
	}
	defer env.Stop()
	api, err := testenv.ChildPID("kube-apiserver")
	if err != nil {
		return b, err
	}
	etcd, err := testenv.ChildPID("etcd")
	if err != nil {
		return b, err
	}
	b = &bench{cfg: cfg, env: env, api: api, etcd: etcd, binDir: binDir}
	kubeconfig := filepath.Join(binDir, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return b, err
	}
	nss := map[string]string{}
	for _, m := range []string{"judged", "plain", "memory", "bare", "latency"} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-policy-" + m + "-"}}
		if err := env.Client.Create(ctx, ns); err != nil {
			return b, err
		}
		nss[m] = ns.Name
	}
	w := env.Environment().WebhookInstallOptions
	caFile := filepath.Join(binDir, "webhook-ca.crt")
	if err := os.WriteFile(caFile, w.LocalServingCAData, 0o600); err != nil {
		return b, err
	}
	probe, _ := freeAddr()
	pprof, _ := freeAddr()
	metricsAddr, _ := freeAddr()
	// rrguard as deployed (the chart's GOMEMLIMIT); startRRGuard starts it again for the
	// start-up row.
	startRRGuard := func() (*server, error) {
		args := append([]string{"--webhook-host=127.0.0.1", "--webhook-port=" + strconv.Itoa(w.LocalServingPort), "--cert-dir=" + w.LocalServingCertDir,
			"--metrics-bind-address=" + metricsAddr, "--metrics-secure=false", "--health-probe-bind-address=" + probe, "--pprof-bind-address=" + pprof,
			"--shutdown-delay=0s", "--rr-namespaces=" + nss["plain"], "--kube-api-qps=5000", "--kube-api-burst=10000",
			// The policies' webhooks call this process, outside any cluster.
			fmt.Sprintf("--webhook-url=https://127.0.0.1:%d", w.LocalServingPort), "--webhook-ca-file=" + caFile}, releaseTimings...)
		return start(ctx, "rrguard", rrguardBin, []string{"KUBECONFIG=" + kubeconfig, "POD_NAMESPACE=" + testenv.MarksNamespace, "GOMEMLIMIT=" + chartGoMemLimit},
			httpReady("http://"+probe+"/readyz"), pprof, args...)
	}
	rr, err := startRRGuard()
	if err != nil {
		return b, err
	}
	defer func() { rr.stop() }()
	// One policy for PipelineRuns, its mode set before each of its rows: the Tekton sample
	// (Forbid), and its Queue and Replace variants.
	specs := map[string]rrguardv1.UniquenessPolicySpec{}
	var p *rrguardv1.UniquenessPolicy
	for mode, file := range policyModes {
		b2, err := os.ReadFile(filepath.Join(root, "config", "samples", file))
		if err != nil {
			return b, err
		}
		sp, err := policy.ReadPolicy(b2)
		if err != nil {
			return b, err
		}
		sp.Spec.Target.Namespaces = []string{nss["judged"], nss["latency"]}
		specs[mode] = sp.Spec
		if mode == "rrguard" {
			p = sp
		}
	}
	if err := env.Client.Create(ctx, p); err != nil {
		return b, err
	}
	if err := awaitPolicy(ctx, env.Client, p.Name, 1); err != nil {
		return b, err
	}
	if err := awaitNamed(ctx, env.Client, nss["judged"]); err != nil {
		return b, err
	}
	// setMode makes the policy mode's spec, and waits until the replica enforces it.
	setMode := func(mode string) error {
		var cur rrguardv1.UniquenessPolicy
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
			return err
		}
		want := specs[mode]
		want.Target.Namespaces = cur.Spec.Target.Namespaces
		if equality.Semantic.DeepEqual(cur.Spec, want) {
			return nil
		}
		cur.Spec = want
		if err := env.Client.Update(ctx, &cur); err != nil {
			return err
		}
		return awaitPolicy(ctx, env.Client, p.Name, cur.Generation)
	}

	bareBin, err := build(root, binDir, "./test/bench/bare", "bare")
	if err != nil {
		return b, err
	}
	bareAddr, err := freeAddr()
	if err != nil {
		return b, err
	}
	_, barePort, _ := strings.Cut(bareAddr, ":")
	bare, err := start(ctx, "bare", bareBin, nil, tlsReady(bareAddr), "", "--port="+barePort, "--cert-dir="+w.LocalServingCertDir)
	if err != nil {
		return b, err
	}
	defer bare.stop()
	if err := routeBare(ctx, env.Client, "https://"+bareAddr+"/mutate-pipelinerun", nss["bare"]); err != nil {
		return b, err
	}
	if err := awaitNamed(ctx, env.Client, nss["bare"]); err != nil {
		return b, err
	}

	var seq atomic.Int64
	create := func(mode string) error {
		n := fmt.Sprint("repo-", seq.Add(1))
		switch mode {
		case "rrguard-rr":
			// Of Kubernaut's size, as the PipelineRuns are of about 2 KB.
			rr := testenv.NewRR(nss["plain"], testenv.Fingerprint("bench-policy/"+n))
			rr.Spec.OriginalPayload = strings.Repeat("p", kubernautPayload)
			return env.Client.Create(ctx, rr)
		case "rrguard", "rrguard-queue", "rrguard-replace":
			return env.Client.Create(ctx, pipelineRun(nss["judged"], n))
		case "bare":
			return env.Client.Create(ctx, pipelineRun(nss["bare"], n))
		}
		return env.Client.Create(ctx, pipelineRun(nss["plain"], n))
	}
	b.rrguardPprof = pprof
	cpu := func() map[string]float64 {
		v := cpuOf(api, etcd, rr.pid(), bare.pid())
		return map[string]float64{"kube-apiserver": v[0], "etcd": v[1], "rrguard": v[2], "bare": v[3]}
	}
	row := func(mode string, round int) (policyRow, error) {
		if _, ok := specs[mode]; ok {
			if err := setMode(mode); err != nil {
				return policyRow{}, fmt.Errorf("%s: %w", mode, err)
			}
		}
		b.settle()
		// rrguard's rows end once rrguard has released what they stored (release.go).
		var release *releaseWindow
		if strings.HasPrefix(mode, "rrguard") {
			release = openRelease(metricsAddr, cpu)
		}
		if cfg.profile && round == 0 && mode != "baseline" {
			go b.profiles(mode)
		}
		cpu0 := cpu()
		var errs atomic.Int64
		var done atomic.Int64
		began := time.Now()
		testenv.Parallel(cfg.signals, cfg.creators, func(int) {
			if time.Since(began) > cfg.rowTime {
				return
			}
			if err := create(mode); err != nil {
				errs.Add(1)
				return
			}
			done.Add(1)
		})
		wall := time.Since(began)
		cpuCreated := cpu()
		n := float64(done.Load())
		if n == 0 {
			return policyRow{}, fmt.Errorf("%s: no create succeeded (%d errors)", mode, errs.Load())
		}
		if err := release.await(int(n), nil); err != nil {
			return policyRow{}, fmt.Errorf("%s: %w", mode, err)
		}
		ms := release.spent(cpu0, cpu())
		return policyRow{mode: mode, creates: int(n), perSec: n / wall.Seconds(), releaseWait: release.waited().Seconds(),
			createAPIMS: (cpuCreated["kube-apiserver"] - cpu0["kube-apiserver"]) * 1000 / n, createRRMS: (cpuCreated["rrguard"] - cpu0["rrguard"]) * 1000 / n,
			apiMS: ms["kube-apiserver"] * 1000 / n, etcdMS: ms["etcd"] * 1000 / n, rrMS: ms["rrguard"] * 1000 / n,
			bareMS: ms["bare"] * 1000 / n,
			errors: int(errs.Load())}, nil
	}
	modes := []string{"baseline", "bare", "rrguard", "rrguard-queue", "rrguard-replace", "rrguard-rr"}
	rows := map[string][]policyRow{}
	for r := range cfg.rounds {
		for i := range modes {
			m := modes[(i+r)%len(modes)]
			pr, err := row(m, r)
			if err != nil {
				return b, err
			}
			fmt.Printf("round %d %-10s %5d creates %6.0f/s  CPU ms/create: kube-apiserver %.2f etcd %.2f rrguard %.2f bare %.2f  release wait %.1fs (create path alone: kube-apiserver %.2f rrguard %.2f)  errors %d\n",
				r+1, m, pr.creates, pr.perSec, pr.apiMS, pr.etcdMS, pr.rrMS, pr.bareMS, pr.releaseWait, pr.createAPIMS, pr.createRRMS, pr.errors)
			rows[m] = append(rows[m], pr)
		}
	}
	fmt.Printf("\nPipelineRuns (Tekton sample policy), %d creators, rows of %d creates or %s, %d rounds; median (range)\n\n",
		cfg.creators, cfg.signals, cfg.rowTime, cfg.rounds)
	fmt.Println("| mode | creates/s | kube-apiserver CPU ms/create | etcd | rrguard | bare | × baseline creates/s | errors |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, m := range modes {
		rs := rows[m]
		med := func(get func(policyRow) float64) string {
			xs := make([]float64, len(rs))
			for i := range rs {
				xs[i] = get(rs[i])
			}
			slices.Sort(xs)
			return fmt.Sprintf("%.2f (%.2f-%.2f)", xs[len(xs)/2], xs[0], xs[len(xs)-1])
		}
		ratio := med(func(r policyRow) float64 {
			i := slices.IndexFunc(rs, func(x policyRow) bool { return x == r })
			return r.perSec / rows["baseline"][i].perSec
		})
		errs := 0
		for _, r := range rs {
			errs += r.errors
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %d |\n", m, med(func(r policyRow) float64 { return r.perSec }),
			med(func(r policyRow) float64 { return r.apiMS }), med(func(r policyRow) float64 { return r.etcdMS }),
			med(func(r policyRow) float64 { return r.rrMS }), med(func(r policyRow) float64 { return r.bareMS }), ratio, errs)
	}
	// The two targets of issue 25, paired per round.
	paired := func(what string, a, b []policyRow, get func(policyRow) float64) {
		xs := make([]float64, len(a))
		for i := range a {
			xs[i] = get(a[i]) / get(b[i])
		}
		slices.Sort(xs)
		fmt.Printf("\n%s: %.2f (%.2f-%.2f)", what, xs[len(xs)/2], xs[0], xs[len(xs)-1])
	}
	paired("rrguard CPU per object, create and release, PipelineRun ÷ RR", rows["rrguard"], rows["rrguard-rr"], func(r policyRow) float64 { return r.rrMS })
	paired("kube-apiserver CPU per PipelineRun, create and release, rrguard ÷ bare webhook", rows["rrguard"], rows["bare"], func(r policyRow) float64 { return r.apiMS })
	// The bare webhook's rows have no release: their create path is their whole cost.
	paired("rrguard CPU per create path, PipelineRun ÷ RR (target ≤ 1.10)", rows["rrguard"], rows["rrguard-rr"], func(r policyRow) float64 { return r.createRRMS })
	paired("kube-apiserver CPU per PipelineRun create path, rrguard ÷ bare webhook (target ≤ 1.10)", rows["rrguard"], rows["bare"], func(r policyRow) float64 { return r.createAPIMS })
	for _, m := range []string{"rrguard-queue", "rrguard-replace"} {
		paired("kube-apiserver CPU per PipelineRun, create and release, "+m+" ÷ bare webhook", rows[m], rows["bare"], func(r policyRow) float64 { return r.apiMS })
		paired("kube-apiserver CPU per PipelineRun create path, "+m+" ÷ bare webhook", rows[m], rows["bare"], func(r policyRow) float64 { return r.createAPIMS })
		paired("rrguard CPU per PipelineRun, create and release, "+m+" ÷ Forbid", rows[m], rows["rrguard"], func(r policyRow) float64 { return r.rrMS })
	}
	fmt.Println()

	// Queue: from the one in flight ending to the next released, at keys queues of queueDepth.
	if err := setMode("rrguard-queue"); err != nil {
		return b, err
	}
	fmt.Printf("\n| keys (queues of %d) | releases timed | in flight ended → next released p50 | p99 | max | watch resumed |\n|---:|---:|---:|---:|---:|---:|\n", queueDepth)
	for _, keys := range cfg.queueKeys {
		lat, err := queueLatency(ctx, env, nss["latency"], keys)
		if err != nil {
			return b, fmt.Errorf("queue latency at %d keys: %w", keys, err)
		}
		fmt.Println(lat.row(keys))
		b.queueLatency = append(b.queueLatency, lat)
	}

	// Memory: objects made where no policy judges them, then the policy extended to their
	// namespace: rrguard's index lists them all (one watch per policy).
	if objects > 0 {
		before, err := rr.liveHeapMB()
		if err != nil {
			return b, err
		}
		fmt.Printf("\ncreating %d PipelineRuns in %s ...\n", objects, nss["memory"])
		var failed atomic.Int64
		testenv.Parallel(objects, 32, func(i int) {
			u := queuedRun(nss["memory"], i, p.Name)
			if err := env.Client.Create(ctx, u); err != nil {
				failed.Add(1)
			}
		})
		if failed.Load() > 0 {
			return b, fmt.Errorf("%d of %d PipelineRuns not created", failed.Load(), objects)
		}
		var cur rrguardv1.UniquenessPolicy
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
			return b, err
		}
		cur.Spec.Target.Namespaces = append(cur.Spec.Target.Namespaces, nss["memory"])
		if err := env.Client.Update(ctx, &cur); err != nil {
			return b, err
		}
		if err := awaitPolicy(ctx, env.Client, p.Name, cur.Generation); err != nil {
			return b, err
		}
		after, err := rr.liveHeapMB()
		if err != nil {
			return b, err
		}
		fmt.Printf("\n| PipelineRuns in the index (queues of %d: 1 released, %d held) | rrguard live heap MB | bytes per PipelineRun (over the heap before: %.1f MB) | RSS MB |\n|---:|---:|---:|---:|\n", queueDepth, queueDepth-1, before)
		fmt.Printf("| %d | %.1f | %.0f | %.0f |\n", objects, after, (after-before)*(1<<20)/float64(objects), float64(testenv.RSSBytes(rr.pid()))/(1<<20))

		// Start-up: a replica started while the PipelineRuns exist lists them all at once; its
		// peak RSS is what the chart's memory limit must hold.
		rr.stop()
		began := time.Now()
		if rr, err = startRRGuard(); err != nil {
			return b, err
		}
		// The policy's stored status is the last replica's: ask this one, by its metrics, when
		// it enforces the policy with every PipelineRun indexed.
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Minute, true, func(context.Context) (bool, error) {
			series := fmt.Sprintf("{policy=%q}", p.Name)
			m := scrapeMetrics(metricsAddr)
			return m["rrguard_policy_enforced"+series] == 1 && m["rrguard_policy_objects"+series] >= float64(objects), nil
		}); err != nil {
			return b, fmt.Errorf("the restarted replica never indexed the %d PipelineRuns: %w", objects, err)
		}
		ready := time.Since(began)
		heap, err := rr.liveHeapMB()
		if err != nil {
			return b, err
		}
		fmt.Printf("\nrestarted with %d PipelineRuns (GOMEMLIMIT=%s): ready in %.1f s, live heap %.1f MB, RSS %.1f MB, peak RSS %.1f MB\n",
			objects, chartGoMemLimit, ready.Seconds(), heap, float64(testenv.RSSBytes(rr.pid()))/(1<<20), float64(testenv.PeakRSSBytes(rr.pid()))/(1<<20))
	}
	return b, nil
}

// queuedRun is the i-th PipelineRun of the memory row, as the Queue sample leaves it: queues of
// queueDepth per key, the first of each released and in flight, the others held (pending, with
// rrguard's annotations), so that the index holds 9 held runs in 10 and the queues stay as they
// are (every key's slot is taken).
func queuedRun(ns string, i int, policyName string) *unstructured.Unstructured {
	key := fmt.Sprint("mem-", i/queueDepth)
	u := pipelineRun(ns, key)
	u.SetGenerateName("")
	u.SetName(fmt.Sprintf("run-%d", i))
	a := map[string]string{
		policy.AnnotationPolicy: policyName, policy.AnnotationKey: key + "/main",
		policy.AnnotationQueued: time.Unix(0, int64(i)).UTC().Format(time.RFC3339Nano),
	}
	if i%queueDepth != 0 {
		a[policy.AnnotationHeld] = "true"
		_ = unstructured.SetNestedField(u.Object, "PipelineRunPending", "spec", "status")
	}
	u.SetAnnotations(a)
	return u
}

// routeBare sends PipelineRun creates in ns to the bare webhook at url, with the CA the suite's
// webhooks use.
func routeBare(ctx context.Context, c client.Client, url, ns string) error {
	var rrm admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &rrm); err != nil {
		return err
	}
	wh := rrm.Webhooks[0]
	wh.Name = "bare-pipelineruns.bench.kubernaut.ai"
	wh.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: wh.ClientConfig.CABundle}
	wh.Rules = []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule:       admissionregistrationv1.Rule{APIGroups: []string{"tekton.dev"}, APIVersions: []string{"v1"}, Resources: []string{"pipelineruns"}},
	}}
	wh.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	wh.ObjectSelector, wh.MatchConditions = nil, nil
	return c.Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-bare-pipelineruns"}, Webhooks: []admissionregistrationv1.MutatingWebhook{wh}})
}

// kubernautPayload is the size of an RR's payload in Kubernaut (docs/benchmarks.md).
const kubernautPayload = 2048

// pipelineRun is a PipelineRun of about 2 KB whose key (repo/main) is repo's.
func pipelineRun(ns, repo string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{"pipelineRef": map[string]any{"name": "build"},
			"params": []any{map[string]any{"name": "revision", "value": strings.Repeat("r", 40)}, map[string]any{"name": "payload", "value": strings.Repeat("p", 1800)}}},
	}}
	u.SetAPIVersion("tekton.dev/v1")
	u.SetKind("PipelineRun")
	u.SetNamespace(ns)
	u.SetGenerateName("build-")
	u.SetLabels(map[string]string{"ci.example.com/repo": repo, "ci.example.com/branch": "main"})
	return u
}

func cpuOf(pids ...int) []float64 {
	out := make([]float64, len(pids))
	for i, p := range pids {
		out[i], _ = testenv.CPUSeconds(p)
	}
	return out
}

// awaitPolicy waits until policy name is enforced at generation gen.
func awaitPolicy(ctx context.Context, c client.Client, name string, gen int64) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Minute, true, func(ctx context.Context) (bool, error) {
		var p rrguardv1.UniquenessPolicy
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
			return false, nil
		}
		return p.Status.ObservedGeneration == gen && meta.IsStatusConditionTrue(p.Status.Conditions, rrguardv1.ConditionEnforced), nil
	})
}

// awaitNamed waits until the API server sends PipelineRun creates in ns to rrguard.
func awaitNamed(ctx context.Context, c client.Client, ns string) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		u := pipelineRun(ns, "probe")
		err := c.Create(ctx, u, client.DryRunAll)
		return err == nil && strings.HasPrefix(u.GetName(), "pr-"), nil
	})
}
