package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rrguard/rrguard/internal/audit"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

// No webhooks: the RRs are created as on a cluster without rrguard.
func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{}, &env)) }

// rrguard audit as an operator runs it, against the current kubeconfig: exit codes and output.
func TestAuditCommand(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "audit-cmd", time.Minute)
	_, empty := env.TestNamespace(t, "audit-cmd-empty", time.Minute)
	kubeconfig := env.Kubeconfig(t)
	t.Setenv("KUBECONFIG", kubeconfig)
	fp := testenv.Fingerprint(ns)
	for _, n := range []int64{1, 2} {
		rr := testenv.NewRR(ns, fp)
		rr.GenerateName, rr.Name = "", rules.Name(fp, n)
		if err := env.Client.Create(ctx, rr); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := auditCmd(args, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	code, out, stderr := run("--namespaces", ns, "--marks-namespace", testenv.MarksNamespace, "-o", "json")
	var r audit.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 {
		t.Fatalf("exit %d, output %q (%v), stderr %q", code, out, err, stderr)
	}
	kinds := map[audit.Kind]int{}
	for _, f := range r.Findings {
		kinds[f.Kind]++
	}
	if r.Objects != 2 || r.Policy != "remediationrequests" || kinds[audit.DuplicateInFlight] != 1 || kinds[audit.NotCoveredByMark] != 2 || len(r.Findings) != 3 {
		t.Fatalf("report %+v", r)
	}
	if code, out, _ := run("--namespaces", empty, "--marks-namespace", testenv.MarksNamespace); code != 0 || out != "0 remediationrequests.kubernaut.ai of policy remediationrequests, 0 keys: 0 findings\n" {
		t.Fatalf("empty namespace: exit %d, %q", code, out)
	}
	if code, _, stderr := run("-o", "yaml"); code != 2 || stderr == "" {
		t.Fatalf("-o yaml: exit %d, stderr %q", code, stderr)
	}
}

// Every port rrguard serves on is bound before anything serves: one another process holds stops
// the start at once with one log line naming the listener and its address, and exit code 1
// (issue 27: the manager used to serve its webhooks, then stop when the metrics bind failed).
func TestATakenPortStopsTheStart(t *testing.T) {
	t.Setenv("KUBECONFIG", env.Kubeconfig(t))
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	base := []string{"--marks-namespace", testenv.MarksNamespace, "--cert-dir", t.TempDir(), "--pprof-bind-address", "0"}
	for _, tc := range []struct {
		name, listener string
		args           []string
	}{
		{"webhook", "webhook", []string{"--webhook-host", "127.0.0.1", "--webhook-port", port, "--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", "0"}},
		{"metrics", "metrics", []string{"--webhook-host", "127.0.0.1", "--webhook-port", "0", "--metrics-bind-address", addr, "--health-probe-bind-address", "0"}},
		{"metrics over HTTP", "metrics", []string{"--webhook-host", "127.0.0.1", "--webhook-port", "0", "--metrics-bind-address", addr, "--metrics-secure=false", "--health-probe-bind-address", "0"}},
		{"health probe", "health probe", []string{"--webhook-host", "127.0.0.1", "--webhook-port", "0", "--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", addr}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			done := make(chan int, 1)
			go func() { done <- run(append(append([]string{}, base...), tc.args...), &logs) }()
			var code int
			select {
			case code = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("rrguard did not stop within 30 s with its port taken")
			}
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			var errLines []string
			for _, l := range lines {
				if strings.Contains(l, `"level":"error"`) {
					errLines = append(errLines, l)
				}
			}
			want := "listen tcp " + addr + ": bind: address already in use"
			if code != 1 || len(errLines) != 1 || !strings.Contains(errLines[0], want) || !strings.Contains(errLines[0], tc.listener) {
				t.Fatalf("exit %d, error lines %q; want exit 1 and one error line naming the %s listener and %q", code, errLines, tc.name, want)
			}
		})
	}
}
