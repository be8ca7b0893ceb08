package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rrguard/rrguard/internal/rules"
)

type policyRow struct {
	Object, Key, KeyHex, Until, Name, Duplicate, Error string
	Matched, Keyless, InFlight                         bool
}

func runPolicyTest(t *testing.T, want int, args ...string) (string, []policyRow) {
	t.Helper()
	var out, errOut bytes.Buffer
	if got := policyCmd(append([]string{"test"}, args...), &out, &errOut); got != want {
		t.Fatalf("rrguard policy test %v: exit %d, want %d\n%s%s", args, got, want, out.String(), errOut.String())
	}
	var rows []policyRow
	if strings.Contains(strings.Join(args, " "), "-o json") || (len(args) > 1 && args[0] == "-o") {
		if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
	}
	return out.String() + errOut.String(), rows
}

// rrguard policy test, offline: each object's key, in-flight verdict and the name it would get,
// creates taken in file order.
func TestPolicyTestCommand(t *testing.T) {
	_, rows := runPolicyTest(t, 0, "-o", "json", "-f", "../../config/samples/tekton-pipelinerun.yaml", "testdata/pipelineruns.yaml")
	main, dev := rules.HashKey("shop/main"), rules.HashKey("shop/dev")
	want := []policyRow{
		{Key: "shop/main", KeyHex: main, Name: "pr-" + main[:32] + "-1", Matched: true, InFlight: true},
		{Key: "shop/main", KeyHex: main, Duplicate: "pr-" + main[:32] + "-1", Matched: true, InFlight: true},
		{Key: "shop/dev", KeyHex: dev, Name: "pr-" + dev[:32] + "-1", Matched: true},
		{Key: "shop/dev", KeyHex: dev, Name: "pr-" + dev[:32] + "-2", Matched: true, InFlight: true},
		{Matched: true, Keyless: true},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows: %+v", len(rows), rows)
	}
	for i, w := range want {
		w.Object = "pipelineruns.tekton.dev ci/build-*"
		if rows[i] != w {
			t.Errorf("row %d: %+v\nwant     %+v", i, rows[i], w)
		}
	}

	// The RR policy: a cooldown refuses the repeat until it ends, then the repeat is -2.
	fp := "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea"
	for now, second := range map[string]string{"2026-12-04T12:00:00Z": "409: duplicate of " + rules.Name(fp, 1), "2026-12-04T13:00:01Z": "named " + rules.Name(fp, 2)} {
		out, _ := runPolicyTest(t, 0, "--now", now, "-f", "../../config/policies/remediationrequests.yaml", "testdata/remediationrequests.yaml")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.Contains(lines[2], "named "+rules.Name(fp, 1)) || !strings.Contains(lines[2], "2026-12-04T13:00:00Z") || !strings.Contains(lines[3], second) {
			t.Errorf("at %s:\n%s", now, out)
		}
	}

	// A policy that cannot be enforced exits 1 saying why; bad usage exits 2.
	if out, _ := runPolicyTest(t, 1, "-f", "testdata/bad-policy.yaml", "testdata/pipelineruns.yaml"); !strings.Contains(out, "CostBudgetExceeded") {
		t.Errorf("bad policy: %s", out)
	}
	runPolicyTest(t, 2, "-f", "../../config/samples/tekton-pipelinerun.yaml")
	runPolicyTest(t, 2, "-f", "testdata/pipelineruns.yaml", "testdata/pipelineruns.yaml") // not a policy
	runPolicyTest(t, 2, "-f", "../../config/samples/tekton-pipelinerun.yaml", "testdata/missing.yaml")
}

// Under Queue and Replace: which create would run, which would wait and in what place, which a
// newer one would cancel, and which its creator held (left alone).
func TestPolicyTestCommandQueue(t *testing.T) {
	for _, c := range []struct {
		sample string
		want   []string // per object of testdata/pipelineruns.yaml, the answer's start
	}{
		{"tekton-pipelinerun-queue.yaml", []string{"held, then released: runs", "held: 1 in its key's queue", "held, then released: runs", "held: 1 in its key's queue", "left alone (no key", "left alone (created held by its creator)"}},
		{"tekton-pipelinerun-replace.yaml", []string{"held, then cancelled by a newer one", "held, then released: runs", "held, then cancelled by a newer one", "held, then released: runs", "left alone (no key", "left alone (created held by its creator)"}},
	} {
		out, _ := runPolicyTest(t, 0, "-f", "../../config/samples/"+c.sample, "testdata/pipelineruns.yaml", "testdata/pending-pipelinerun.yaml")
		lines := strings.Split(strings.TrimSpace(out), "\n")[2:]
		if len(lines) != len(c.want) {
			t.Fatalf("%s: %d rows:\n%s", c.sample, len(lines), out)
		}
		for i, w := range c.want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("%s, row %d: %q, want %q", c.sample, i, lines[i], w)
			}
		}
	}
}
