package main

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/rrguard/rrguard/audit"
	"github.com/rrguard/rrguard/rules"
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
	if r.RRs != 2 || kinds[audit.DuplicateInFlight] != 1 || kinds[audit.NotCoveredByMark] != 2 || len(r.Findings) != 3 {
		t.Fatalf("report %+v", r)
	}
	if code, out, _ := run("--namespaces", empty, "--marks-namespace", testenv.MarksNamespace); code != 0 || out != "0 RRs, 0 fingerprints: 0 findings\n" {
		t.Fatalf("empty namespace: exit %d, %q", code, out)
	}
	if code, _, stderr := run("-o", "yaml"); code != 2 || stderr == "" {
		t.Fatalf("-o yaml: exit %d, stderr %q", code, stderr)
	}
}
