// Package webhook tests rrguard's admission webhooks served in-process, registered from
// config/webhook on a real API server, through real clients.
package webhook

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

var (
	env     *testenv.Env
	stopRRG func() error
	// consistentListOnly is the lister mode of the replica the suite runs against; scanning, that
	// the CRD declares no selectable field, so the consistent read scans the namespace.
	consistentListOnly, scanning bool
)

func TestMain(m *testing.M) {
	// Started with rrguard's validating webhook known, so that the suite can run with either check.
	os.Exit(testenv.Main(m, testenv.Options{Webhooks: true, CheckWebhook: true}, &env))
}

// suite is every test of rrguard's behaviour through the API server; TestWebhook runs it once
// with each way of deciding (from the RR index where that is safe, the default; consistent reads
// only, by field selector or, for a CRD without the selectable field, by a scan of the namespace),
// since the guarantee must hold with each.
var suite = []struct {
	name string
	fn   func(*testing.T)
}{
	{"GWDedup002", testGWDedup002},
	{"GWDedup002Details", testGWDedup002Details},
	{"Storm200Over20", testStorm200Over20},
	{"Lifecycle", testLifecycle},
	{"NamesAreRewritten", testNamesAreRewritten},
	{"DryRun", testDryRun},
	{"BadFingerprintThroughWebhook", testBadFingerprintThroughWebhook},
	{"LegacyInFlightRefuses", testLegacyInFlightRefuses},
	{"ServerSideApplyOfForeignNamesRefused", testServerSideApplyOfForeignNamesRefused},
	{"ServerSideApplyOfSchemeName", testServerSideApplyOfSchemeName},
	{"ClientSideApply", testClientSideApply},
	{"ServerSideApplyTypedError", testServerSideApplyTypedError},
	{"ServerSideApplyRenamedByOtherMutationRefused", testServerSideApplyRenamedByOtherMutationRefused},
	{"RRGuardDownFailsClosed", testRRGuardDownFailsClosed},
	{"InstallCheck", testInstallCheck},
}

func TestWebhook(t *testing.T) {
	for _, mode := range []struct {
		name               string
		consistentListOnly bool
		checkWebhook       bool
		scan               bool
	}{{"index", false, false, false}, {"consistent-list", true, false, false}, {"consistent-scan", true, false, true},
		{"index-check-webhook", false, true, false}} {
		t.Run(mode.name, func(t *testing.T) {
			useMode(t, mode.consistentListOnly, mode.scan)
			if err := env.UseCheck(context.Background(), mode.checkWebhook); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := env.UseCheck(context.Background(), false); err != nil {
					t.Error(err)
				}
			})
			for _, tc := range suite {
				t.Run(tc.name, tc.fn)
			}
		})
	}
}

// useMode makes the suite's replica run in the given lister mode from now on; scan takes the
// selectable field off the CRD for the length of the test.
func useMode(t *testing.T, listOnly, scan bool) {
	t.Helper()
	if stopRRG != nil && (consistentListOnly != listOnly || scanning != scan) {
		if err := stopRRG(); err != nil {
			t.Fatal(err)
		}
		stopRRG = nil
	}
	consistentListOnly, scanning = listOnly, scan
	if scan {
		if err := env.SelectableFingerprint(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if stopRRG != nil {
				_ = stopRRG()
				stopRRG = nil
			}
			scanning = false
			if err := env.SelectableFingerprint(context.Background(), true); err != nil {
				t.Error(err)
			}
		})
	}
}

// serving makes sure rrguard serves for the test (a previous test may have stopped it).
func serving(t *testing.T) {
	t.Helper()
	if stopRRG != nil {
		return
	}
	_, stop, err := env.ServeReplica(context.Background(), env.Config, func(o *serve.Options) {
		testenv.IndexTrusted(o)
		o.ConsistentListOnly = consistentListOnly
	})
	if err != nil {
		t.Fatal(err)
	}
	stopRRG = stop
	// The RR policy's probe at start-up must have seen what the CRD declares, and said so.
	want := rrguardv1.ReadFieldSelector
	if scanning {
		want = rrguardv1.ReadNamespaceScan
	}
	read, err := testenv.Metric("rrguard_policy_consistent_read", map[string]string{"policy": serve.RRPolicy, "read": string(want)})
	if err != nil || read.GetGauge().GetValue() != 1 {
		t.Fatalf("the RR policy's consistent read is not %s with the CRD declaring the field selectable: %v (%v)", want, !scanning, err)
	}
	// The built-in policy has no object to carry a status: its metrics say it is enforced.
	if enforced, err := testenv.Metric("rrguard_policy_enforced", map[string]string{"policy": serve.RRPolicy}); err != nil || enforced.GetGauge().GetValue() != 1 {
		t.Fatalf("rrguard_policy_enforced{policy=%q} is not 1 on a serving replica: %v", serve.RRPolicy, err)
	}
}

// replaced stops the suite's replica for a test that runs one of its own.
func replaced(t *testing.T) {
	t.Helper()
	if stopRRG != nil {
		if err := stopRRG(); err != nil {
			t.Fatal(err)
		}
		stopRRG = nil
	}
}

func setup(t *testing.T) (context.Context, string) {
	t.Helper()
	serving(t)
	return env.TestNamespace(t, "wh", 2*time.Minute)
}

func list(ctx context.Context, t *testing.T, ns string) []v1alpha1.RemediationRequest {
	t.Helper()
	var l v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &l, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// checkStorm asserts one stored RR per fingerprint, named by the scheme, and every other create
// refused with AlreadyExists naming it.
func checkStorm(ctx context.Context, t *testing.T, ns string, fps []string, out []testenv.Outcome) {
	t.Helper()
	stored := map[string]string{}
	for _, o := range out {
		switch {
		case o.Err != nil:
			t.Fatalf("fingerprint %s: unexpected error %v", o.Fingerprint[:8], o.Err)
		case o.Stored != "":
			if prev, dup := stored[o.Fingerprint]; dup {
				t.Fatalf("fingerprint %s stored twice: %s and %s", o.Fingerprint[:8], prev, o.Stored)
			}
			stored[o.Fingerprint] = o.Stored
		}
	}
	for _, o := range out {
		if o.Stored == "" && o.DuplicateOf != stored[o.Fingerprint] {
			t.Fatalf("fingerprint %s: refusal names %q, stored RR is %q", o.Fingerprint[:8], o.DuplicateOf, stored[o.Fingerprint])
		}
	}
	items := list(ctx, t, ns)
	if len(items) != len(fps) || len(stored) != len(fps) {
		t.Fatalf("%d RRs stored (%d reported) for %d fingerprints", len(items), len(stored), len(fps))
	}
	for _, rr := range items {
		if want := rules.Name(rr.Spec.SignalFingerprint, 1); rr.Name != want || stored[rr.Spec.SignalFingerprint] != want {
			t.Fatalf("stored %s, want %s", rr.Name, want)
		}
	}
}

// GW-DEDUP-002 as first written: five truly simultaneous first creates, no anchor request.
func testGWDedup002(t *testing.T) {
	ctx, ns := setup(t)
	for round := range 50 {
		fp := testenv.Fingerprint(fmt.Sprintf("%s/gw-dedup-002/%d", ns, round))
		out := testenv.Storm(ctx, env.Client, ns, []string{fp}, 5)
		stored, dups := 0, 0
		for _, o := range out {
			if o.Stored != "" {
				stored++
			}
			if o.DuplicateOf != "" {
				dups++
			}
		}
		if stored != 1 || dups != 4 {
			t.Fatalf("round %d: %d stored, %d refused as duplicates; want 1 and 4 (%+v)", round, stored, dups, out)
		}
	}
	fps := map[string]bool{}
	for _, rr := range list(ctx, t, ns) {
		if fps[rr.Spec.SignalFingerprint] {
			t.Fatalf("duplicate RR for %s", rr.Spec.SignalFingerprint)
		}
		fps[rr.Spec.SignalFingerprint] = true
	}
	if len(fps) != 50 {
		t.Fatalf("%d RRs after 50 rounds", len(fps))
	}
}

func testGWDedup002Details(t *testing.T) {
	ctx, ns := setup(t)
	fp := testenv.Fingerprint(ns + "/details")
	checkStorm(ctx, t, ns, []string{fp}, testenv.Storm(ctx, env.Client, ns, []string{fp}, 5))
}

func testStorm200Over20(t *testing.T) {
	ctx, ns := setup(t)
	var fps []string
	for i := range 20 {
		fps = append(fps, testenv.Fingerprint(fmt.Sprintf("%s/storm/%d", ns, i)))
	}
	checkStorm(ctx, t, ns, fps, testenv.Storm(ctx, env.Client, ns, fps, 10))
}

func setStatus(ctx context.Context, t *testing.T, rr *v1alpha1.RemediationRequest, st v1alpha1.RemediationRequestStatus) {
	t.Helper()
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rr), rr); err != nil {
		t.Fatal(err)
	}
	rr.Status = st
	if err := env.Client.Status().Update(ctx, rr); err != nil {
		t.Fatalf("status update: %v", err)
	}
	if !kubernaut.InFlight(rr, time.Now()) {
		if err := testenv.WaitFinishedJudged(ctx, env.Client, rr); err != nil {
			t.Fatal(err)
		}
	}
}

func testLifecycle(t *testing.T) {
	ctx, ns := setup(t)
	future := metav1.NewTime(time.Now().Add(time.Hour))
	past := metav1.NewTime(time.Now().Add(-time.Minute))
	tests := []struct {
		name   string
		status v1alpha1.RemediationRequestStatus
		allow  bool
	}{
		{"empty", v1alpha1.RemediationRequestStatus{}, false},
		{"ManualReviewRequired", v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseCompleted,
			CompletionStatus: &v1alpha1.CompletionStatus{Outcome: v1alpha1.OutcomeManualReviewRequired}}, false},
		{"future nextAllowedExecution", v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseFailed,
			RoutingStatus: &v1alpha1.RoutingStatus{NextAllowedExecution: &future}}, false},
		{"past nextAllowedExecution", v1alpha1.RemediationRequestStatus{OverallPhase: v1alpha1.PhaseFailed,
			RoutingStatus: &v1alpha1.RoutingStatus{NextAllowedExecution: &past}}, true},
	}
	for _, p := range []v1alpha1.Phase{v1alpha1.PhasePending, v1alpha1.PhaseProcessing, v1alpha1.PhaseAnalyzing,
		v1alpha1.PhaseAwaitingApproval, v1alpha1.PhaseExecuting, v1alpha1.PhaseVerifying, v1alpha1.PhaseBlocked} {
		tests = append(tests, struct {
			name   string
			status v1alpha1.RemediationRequestStatus
			allow  bool
		}{string(p), v1alpha1.RemediationRequestStatus{OverallPhase: p}, false})
	}
	for _, p := range []v1alpha1.Phase{v1alpha1.PhaseCompleted, v1alpha1.PhaseFailed, v1alpha1.PhaseTimedOut,
		v1alpha1.PhaseSkipped, v1alpha1.PhaseCancelled} {
		tests = append(tests, struct {
			name   string
			status v1alpha1.RemediationRequestStatus
			allow  bool
		}{string(p), v1alpha1.RemediationRequestStatus{OverallPhase: p}, true})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fp := testenv.Fingerprint(ns + "/lifecycle/" + tc.name)
			first := testenv.NewRR(ns, fp)
			if err := env.Client.Create(ctx, first); err != nil {
				t.Fatal(err)
			}
			setStatus(ctx, t, first, tc.status)
			second := testenv.NewRR(ns, fp)
			err := env.Client.Create(ctx, second)
			if tc.allow {
				if err != nil || second.Name != rules.Name(fp, 2) {
					t.Fatalf("got %q, %v; want %s", second.Name, err, rules.Name(fp, 2))
				}
				return
			}
			if !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != first.Name || !strings.Contains(err.Error(), first.Name) {
				t.Fatalf("got %v (details.name %q); want AlreadyExists naming %s", err, testenv.DetailsName(err), first.Name)
			}
		})
	}
}

// Whatever name the client asks for, the stored RR carries the scheme's.
func testNamesAreRewritten(t *testing.T) {
	ctx, ns := setup(t)
	gen := testenv.NewRR(ns, testenv.Fingerprint(ns+"/generateName"))
	explicit := testenv.NewRR(ns, testenv.Fingerprint(ns+"/explicit"))
	explicit.GenerateName, explicit.Name = "", "my-own-name"
	for _, rr := range []*v1alpha1.RemediationRequest{gen, explicit} {
		if err := env.Client.Create(ctx, rr); err != nil {
			t.Fatal(err)
		}
		if want := rules.Name(rr.Spec.SignalFingerprint, 1); rr.Name != want || rr.GenerateName != "" {
			t.Fatalf("stored as %q (generateName %q), want %s", rr.Name, rr.GenerateName, want)
		}
	}

	kubectlNS := kubectlIn(ctx, t, ns)
	kubectl := func(args ...string) (string, error) { return kubectlNS("", args...) }
	sample := filepath.Join(env.Root, "config", "samples", "remediationrequest.yaml")
	out, err := kubectl("create", "-f", sample, "-o", "name")
	var sampleRR v1alpha1.RemediationRequest
	if err == nil {
		err = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: strings.TrimPrefix(strings.TrimSpace(out), "remediationrequest.kubernaut.ai/")}, &sampleRR)
	}
	if err != nil {
		t.Fatalf("kubectl create: %v\n%s", err, out)
	}
	if want := rules.Name(sampleRR.Spec.SignalFingerprint, 1); sampleRR.Name != want {
		t.Fatalf("kubectl stored %s, want %s", sampleRR.Name, want)
	}
	out, err = kubectl("create", "-f", sample)
	if err == nil || !strings.Contains(out, "AlreadyExists") && !strings.Contains(out, "already in flight") || !strings.Contains(out, sampleRR.Name) {
		t.Fatalf("second kubectl create: %v\n%s", err, out)
	}
}

func testDryRun(t *testing.T) {
	ctx, ns := setup(t)
	fp := testenv.Fingerprint(ns + "/dry-run")
	dry := testenv.NewRR(ns, fp)
	if err := env.Client.Create(ctx, dry, client.DryRunAll); err != nil || dry.Name != rules.Name(fp, 1) {
		t.Fatalf("dry run: %q, %v", dry.Name, err)
	}
	if n := len(list(ctx, t, ns)); n != 0 {
		t.Fatalf("dry run stored %d RRs", n)
	}
	if err := env.Client.Create(ctx, testenv.NewRR(ns, fp)); err != nil {
		t.Fatal(err)
	}
	err := env.Client.Create(ctx, testenv.NewRR(ns, fp), client.DryRunAll)
	if !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != rules.Name(fp, 1) {
		t.Fatalf("dry-run duplicate: %v", err)
	}
}

func testBadFingerprintThroughWebhook(t *testing.T) {
	ctx, ns := setup(t)
	for _, fp := range []string{"", "ABC", testenv.Fingerprint("x")[:63]} {
		err := env.Client.Create(ctx, testenv.NewRR(ns, fp))
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.signalFingerprint") {
			t.Errorf("fingerprint %q: %v", fp, err)
		}
	}
	if n := len(list(ctx, t, ns)); n != 0 {
		t.Fatalf("%d RRs stored", n)
	}
}

func testLegacyInFlightRefuses(t *testing.T) {
	ctx, ns := setup(t)
	fp := testenv.Fingerprint(ns + "/legacy")
	legacy := "rr-" + fp[:12] + "-1a2b3c4d"
	env.WithoutWebhooks(ctx, t, func() {
		// The API server drops webhook configurations from its own informer a moment later.
		var err error
		poll(ctx, t, "a legacy RR created without rrguard", func() bool {
			rr := testenv.NewRR(ns, fp)
			rr.GenerateName, rr.Name = "", legacy
			err = env.Client.Create(ctx, rr)
			if err == nil && rr.Name != legacy {
				_ = env.Client.Delete(ctx, rr)
			}
			return err == nil && rr.Name == legacy
		}, &err)
	})
	// Once the webhooks are back, a new create of the fingerprint is refused, naming the legacy RR.
	var err error
	poll(ctx, t, "AlreadyExists naming "+legacy, func() bool {
		rr := testenv.NewRR(ns, fp)
		err = env.Client.Create(ctx, rr)
		if err == nil && rr.Name != rules.Name(fp, 1) {
			// Created while the API server still ran without the webhook: not rrguard's answer yet.
			_ = env.Client.Delete(ctx, rr)
		} else if err == nil {
			t.Fatalf("stored %s beside the legacy in-flight RR %s", rr.Name, legacy)
		}
		return apierrors.IsAlreadyExists(err) && testenv.DetailsName(err) == legacy
	}, &err)
}

// poll retries cond every 100 ms for up to 30 s; last is the error to report if it never holds.
func poll(ctx context.Context, t *testing.T, what string, cond func() bool, last *error) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("%s: %v (last: %v)", what, err, *last)
	}
}

// failurePolicy Fail: without rrguard no RR is created, and the error says why.
func testRRGuardDownFailsClosed(t *testing.T) {
	ctx, ns := setup(t)
	if err := stopRRG(); err != nil {
		t.Fatal(err)
	}
	stopRRG = nil
	err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/down")))
	if err == nil || !strings.Contains(err.Error(), "failed calling webhook") || !strings.Contains(err.Error(), "rrguard") {
		t.Fatalf("create with rrguard down: %v", err)
	}
	if n := len(list(ctx, t, ns)); n != 0 {
		t.Fatalf("%d RRs stored with rrguard down", n)
	}
	serving(t)
	if err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(ns+"/down"))); err != nil {
		t.Fatalf("create after rrguard is back: %v", err)
	}
}

// The post-install check (`rrguard check`) sees rrguard answer through the API server, stores
// nothing, and says so clearly when the webhooks are not installed.
func testInstallCheck(t *testing.T) {
	ctx, ns := setup(t)
	name, err := cluster.Check(ctx, env.Client, ns)
	if err != nil || !strings.HasPrefix(name, "rr-") {
		t.Fatalf("check: %q, %v", name, err)
	}
	if n := len(list(ctx, t, ns)); n != 0 {
		t.Fatalf("the check stored %d RRs", n)
	}
	// Its line on the API server: the release this control plane runs, in the tested range.
	api, err := serve.ProbeAPIServer(ctx, env.Config)
	if err != nil || api.GitVersion != "v"+env.Release.String() || !api.Tested {
		t.Fatalf("probe of kube-apiserver %s: %+v, %v", env.Release, api, err)
	}
	env.WithoutWebhooks(ctx, t, func() {
		var err error
		poll(ctx, t, "check without webhooks", func() bool {
			_, err = cluster.Check(ctx, env.Client, ns)
			return err != nil && strings.Contains(err.Error(), "without rrguard naming it")
		}, &err)
	})
}
