package policy

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut"
)

func load(t *testing.T, path string) *rrguardv1.UniquenessPolicy {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p rrguardv1.UniquenessPolicy
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &p
}

func compiled(t *testing.T, path string) *Compiled {
	t.Helper()
	c, err := Compile(load(t, path), "rrguard-system")
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

const rrPolicy = "../../config/policies/remediationrequests.yaml"

// Every shipped policy compiles, and each target gets the consistent read its key allows.
func TestShippedPoliciesCompile(t *testing.T) {
	want := map[string]struct {
		read   rrguardv1.ConsistentRead
		labels []string
	}{
		"../../config/policies/remediationrequests.yaml":       {rrguardv1.ReadFieldSelector, nil},
		"../../config/samples/tekton-pipelinerun.yaml":         {rrguardv1.ReadLabelSelector, []string{"ci.example.com/branch", "ci.example.com/repo"}},
		"../../config/samples/argo-workflow.yaml":              {rrguardv1.ReadLabelSelector, []string{"example.com/job"}},
		"../../config/samples/batch-job.yaml":                  {rrguardv1.ReadLabelSelector, []string{"example.com/job"}},
		"../../config/samples/tekton-pipelinerun-queue.yaml":   {rrguardv1.ReadLabelSelector, []string{"ci.example.com/branch", "ci.example.com/repo"}},
		"../../config/samples/tekton-pipelinerun-replace.yaml": {rrguardv1.ReadLabelSelector, []string{"ci.example.com/branch", "ci.example.com/repo"}},
		"../../config/samples/argo-workflow-queue.yaml":        {rrguardv1.ReadLabelSelector, []string{"example.com/job"}},
		"../../config/samples/argo-workflow-replace.yaml":      {rrguardv1.ReadLabelSelector, []string{"example.com/job"}},
		"../../config/samples/batch-job-queue.yaml":            {rrguardv1.ReadLabelSelector, []string{"example.com/queue"}},
		"../../config/samples/batch-job-replace.yaml":          {rrguardv1.ReadLabelSelector, []string{"example.com/queue"}},
		"../../config/samples/batch-job-kueue-queue.yaml":      {rrguardv1.ReadLabelSelector, []string{"example.com/queue"}},
		"../../config/samples/batch-job-kueue-replace.yaml":    {rrguardv1.ReadLabelSelector, []string{"example.com/queue"}},
	}
	files, _ := filepath.Glob("../../config/samples/*.yaml")
	files = append(files, rrPolicy)
	seen := 0
	for _, f := range files {
		if b, _ := os.ReadFile(f); !strings.Contains(string(b), "kind: UniquenessPolicy") {
			continue
		}
		seen++
		c := compiled(t, f)
		w, ok := want[f]
		if !ok {
			t.Errorf("%s: a policy this test does not know", f)
			continue
		}
		if c.Read != w.read || !reflect.DeepEqual(c.LabelKeys, w.labels) || (c.Read == rrguardv1.ReadFieldSelector) != (c.KeyField == "spec.signalFingerprint") {
			t.Errorf("%s: read %s %v, want %s %v", f, c.Read, c.LabelKeys, w.read, w.labels)
		}
	}
	if seen != len(want) {
		t.Fatalf("found %d policies, want %d", seen, len(want))
	}
}

// randomRR is a Kubernaut RR as JSON, with a random state among those the in-flight rule tells
// apart.
func randomRR(rnd *rand.Rand, i int, now time.Time) map[string]any {
	phases := []string{"", "Pending", "Processing", "Blocked", "Completed", "Failed", "TimedOut", "Skipped", "Cancelled", "SomethingNew"}
	outcomes := []string{"", "Remediated", "ManualReviewRequired", "Inconclusive"}
	fp := rules.HashKey(string(rune(i)) + "fp")
	meta := map[string]any{"name": rules.Name(fp, int64(1+rnd.IntN(5))), "namespace": "kubernaut-system",
		"creationTimestamp": now.Add(-time.Hour).UTC().Format(time.RFC3339)}
	obj := map[string]any{"apiVersion": "kubernaut.ai/v1alpha1", "kind": "RemediationRequest", "metadata": meta,
		"spec": map[string]any{"signalFingerprint": fp, "signalName": "HighMemory"}}
	if rnd.IntN(6) == 0 {
		return obj // no status at all: new
	}
	st := map[string]any{}
	if p := phases[rnd.IntN(len(phases))]; p != "" || rnd.IntN(2) == 0 {
		st["overallPhase"] = p
	}
	if rnd.IntN(2) == 0 {
		st["completionStatus"] = map[string]any{"outcome": outcomes[rnd.IntN(len(outcomes))]}
	}
	switch rnd.IntN(4) {
	case 0:
		st["routingStatus"] = map[string]any{"nextAllowedExecution": now.Add(time.Hour).UTC().Format(time.RFC3339)}
	case 1:
		st["routingStatus"] = map[string]any{"nextAllowedExecution": now.Add(-time.Hour).UTC().Format(time.RFC3339)}
	case 2:
		st["routingStatus"] = map[string]any{}
	}
	obj["status"] = st
	if rnd.IntN(5) == 0 {
		meta["deletionTimestamp"] = now.UTC().Format(time.RFC3339)
	}
	return obj
}

// The RR policy, run by the engine's CEL, is today's Go rules: the same key, the same names, the
// same in-flight verdict at every instant that matters, the same phase in a 409, for 2,000
// random RRs.
func TestRRPolicyAgreesWithTheRules(t *testing.T) {
	c := compiled(t, rrPolicy)
	ctx := context.Background()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		obj := randomRR(rnd, i, now)
		b, _ := json.Marshal(obj)
		var rr v1alpha1.RemediationRequest
		if err := json.Unmarshal(b, &rr); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.Matches(ctx, obj); !ok || err != nil {
			t.Fatalf("%s: not matched: %v", b, err)
		}
		keyHex, _, err := c.Key(ctx, obj)
		if err != nil || keyHex != rr.Spec.SignalFingerprint {
			t.Fatalf("%s: key %q, %v", b, keyHex, err)
		}
		for n := int64(1); n < 4; n++ {
			if got, want := c.Name(keyHex, n), rules.Name(rr.Spec.SignalFingerprint, n); got != want {
				t.Fatalf("name %d: %s, want %s", n, got, want)
			}
		}
		f, err := c.Fact(ctx, obj, rr.Name, keyHex, rr.CreationTimestamp.Time, rr.DeletionTimestamp != nil)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if wantN, _ := rules.Occurrence(rr.Spec.SignalFingerprint, rr.Name); f.N != wantN || f.Phase != string(rr.Status.OverallPhase) {
			t.Fatalf("%s: fact %+v", b, f)
		}
		for _, at := range []time.Duration{0, 59 * time.Minute, time.Hour, time.Hour + time.Second, 1000 * time.Hour} {
			if got, want := f.InFlight(now.Add(at)), kubernaut.InFlight(&rr, now.Add(at)); got != want {
				t.Fatalf("%s at now+%v: policy says in flight %v, the rule %v", b, at, got, want)
			}
		}
	}
}

func rrPolicyWith(edit func(*rrguardv1.UniquenessPolicySpec)) *rrguardv1.UniquenessPolicy {
	p := &rrguardv1.UniquenessPolicy{Spec: rrguardv1.UniquenessPolicySpec{
		Target:   rrguardv1.Target{Group: "tekton.dev", Versions: []string{"v1"}, Resource: "pipelineruns"},
		Key:      rrguardv1.Key{Expression: "object.metadata.labels['repo']", NamePrefix: "pr-"},
		InFlight: "true",
	}}
	edit(&p.Spec)
	return p
}

// A policy rrguard cannot enforce says which field and why, with a reason its status shows.
func TestCompileRefuses(t *testing.T) {
	for _, c := range []struct {
		name   string
		edit   func(*rrguardv1.UniquenessPolicySpec)
		reason string
		field  string
	}{
		{"syntax", func(s *rrguardv1.UniquenessPolicySpec) { s.Key.Expression = "object.metadata.labels[" }, ReasonCompileError, "spec.key.expression"},
		{"unknown variable", func(s *rrguardv1.UniquenessPolicySpec) { s.InFlight = "request.operation == 'CREATE'" }, ReasonCompileError, "spec.inFlight"},
		{"key not a string", func(s *rrguardv1.UniquenessPolicySpec) { s.Key.Expression = "1 + 2" }, ReasonCompileError, "spec.key.expression"},
		{"in flight not bool or time", func(s *rrguardv1.UniquenessPolicySpec) { s.InFlight = "'yes'" }, ReasonCompileError, "spec.inFlight"},
		{"match not bool", func(s *rrguardv1.UniquenessPolicySpec) {
			s.MatchConditions = []rrguardv1.MatchCondition{{Name: "m", Expression: "42"}}
		}, ReasonCompileError, "spec.matchConditions[0].expression"},
		{"over budget", func(s *rrguardv1.UniquenessPolicySpec) {
			s.InFlight = "object.status.conditions.all(a, object.status.conditions.all(b, object.status.conditions.exists(c, a.type == b.type && b.type == c.type)))"
		}, ReasonOverBudget, "spec.inFlight"},
		{"leases", func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "coordination.k8s.io", Versions: []string{"v1"}, Resource: "leases"}
		}, ReasonForbiddenTarget, "spec.target.resource"},
		{"events", func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Versions: []string{"v1"}, Resource: "events"}
		}, ReasonForbiddenTarget, "spec.target.resource"},
		{"its own policies", func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "rrguard.kubernaut.ai", Versions: []string{"v1alpha1"}, Resource: "uniquenesspolicies"}
		}, ReasonForbiddenTarget, "spec.target.resource"},
		{"reviews", func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "authorization.k8s.io", Versions: []string{"v1"}, Resource: "subjectaccessreviews"}
		}, ReasonForbiddenTarget, "spec.target.resource"},
		{"its own namespace", func(s *rrguardv1.UniquenessPolicySpec) { s.Target.Namespaces = []string{"ci", "rrguard-system"} }, ReasonForbiddenTarget, "spec.target.namespaces[1]"},
		{"kube-system", func(s *rrguardv1.UniquenessPolicySpec) { s.Target.Namespaces = []string{"kube-system"} }, ReasonForbiddenTarget, "spec.target.namespaces[0]"},
		{"subresource", func(s *rrguardv1.UniquenessPolicySpec) { s.Target.Resource = "pipelineruns/status" }, ReasonInvalid, "spec.target.resource"},
		{"no version", func(s *rrguardv1.UniquenessPolicySpec) { s.Target.Versions = nil }, ReasonInvalid, "spec.target.versions"},
		{"long prefix", func(s *rrguardv1.UniquenessPolicySpec) { s.Key.NamePrefix = "pipelinerun-" }, ReasonInvalid, "spec.key.namePrefix"},
		{"upper prefix", func(s *rrguardv1.UniquenessPolicySpec) { s.Key.NamePrefix = "PR-" }, ReasonInvalid, "spec.key.namePrefix"},
		{"encoding", func(s *rrguardv1.UniquenessPolicySpec) { s.Key.Encoding = "Base64" }, ReasonInvalid, "spec.key.encoding"},
		{"name check", func(s *rrguardv1.UniquenessPolicySpec) { s.NameCheck = "Nobody" }, ReasonInvalid, "spec.nameCheck"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Compile(rrPolicyWith(c.edit), "rrguard-system")
			var pe *Error
			if !errors.As(err, &pe) || pe.Reason != c.reason || len(pe.Errs) == 0 || pe.Errs[0].Field != c.field {
				t.Fatalf("%v, want %s on %s", err, c.reason, c.field)
			}
			if (c.reason == ReasonForbiddenTarget) != errors.Is(err, ErrForbiddenTarget) {
				t.Fatalf("errors.Is(ErrForbiddenTarget) = %v for %v", errors.Is(err, ErrForbiddenTarget), err)
			}
		})
	}
	// A name too long for what rrguard writes after it (its webhooks and name check) is refused; the
	// longest that fits compiles.
	long := rrPolicyWith(func(*rrguardv1.UniquenessPolicySpec) {})
	long.Name = strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", maxPolicyName-183)
	if _, err := Compile(long, ""); err != nil || len(GeneratedName(long.Name)) != 253 {
		t.Fatalf("a %d-character name: %v (generated names %d characters)", len(long.Name), err, len(GeneratedName(long.Name)))
	}
	long.Name += "d"
	var pe *Error
	if _, err := Compile(long, ""); !errors.As(err, &pe) || pe.Reason != ReasonInvalid || pe.Errs[0].Field != "metadata.name" {
		t.Fatalf("a %d-character name: %v, want Invalid on metadata.name", len(long.Name), err)
	}
	// One comprehension over a list is within budget.
	if _, err := Compile(rrPolicyWith(func(s *rrguardv1.UniquenessPolicySpec) {
		s.InFlight = "!object.status.conditions.exists(c, c.type == 'Succeeded' && c.status != 'Unknown')"
	}), ""); err != nil {
		t.Fatal(err)
	}
}

func TestConsistentRead(t *testing.T) {
	for expr, want := range map[string]rrguardv1.ConsistentRead{
		"object.spec.signalFingerprint":                                        rrguardv1.ReadFieldSelector,
		"object.metadata.labels.app":                                           rrguardv1.ReadLabelSelector,
		"object.metadata.labels['a'] + '/' + object.metadata.labels['b']":      rrguardv1.ReadLabelSelector,
		"object.metadata.labels['a'].lowerAscii()":                             rrguardv1.ReadLabelSelector,
		"has(object.metadata.labels.a) ? object.metadata.labels.a : 'default'": rrguardv1.ReadNamespaceScan,
		"object.metadata.labels[?'a'].orValue('x')":                            rrguardv1.ReadNamespaceScan,
		"object.metadata.labels['a'] + object.spec.x":                          rrguardv1.ReadNamespaceScan,
		"object.metadata.annotations['a']":                                     rrguardv1.ReadNamespaceScan,
		"object.metadata.labels[object.spec.k]":                                rrguardv1.ReadNamespaceScan,
		"object.spec.items[0]":                                                 rrguardv1.ReadNamespaceScan,
	} {
		if got, _ := consistentRead(expr); got != want {
			t.Errorf("%s: %s, want %s", expr, got, want)
		}
	}
}

// Keys: what a create whose object gives no usable key is told.
func TestKeyErrors(t *testing.T) {
	ctx := context.Background()
	tekton := compiled(t, "../../config/samples/tekton-pipelinerun.yaml")
	rr := compiled(t, rrPolicy)
	labels := func(l map[string]any) map[string]any { return map[string]any{"metadata": map[string]any{"labels": l}} }
	items := compiled(t, "testdata/first-item-key.yaml")
	argo := compiled(t, "../../config/samples/argo-workflow.yaml")
	for _, c := range []struct {
		name   string
		p      *Compiled
		obj    map[string]any
		err    error
		absent bool // not the policy's object, unless it requires a key
	}{
		{"no labels", tekton, map[string]any{"metadata": map[string]any{}}, ErrNoKey, true},
		{"one label missing", tekton, labels(map[string]any{"ci.example.com/repo": "a"}), ErrNoKey, true},
		{"no metadata", tekton, map[string]any{}, ErrNoKey, true},
		{"an empty label", argo, labels(map[string]any{"example.com/job": ""}), ErrEmptyKey, true},
		{"no spec", rr, map[string]any{}, ErrNoKey, true},
		{"no list element", items, map[string]any{"spec": map[string]any{"items": []any{}}}, ErrNoKey, true},
		{"not hex", rr, map[string]any{"spec": map[string]any{"signalFingerprint": strings.Repeat("G", 64)}}, ErrNotHex, false},
		{"short hex", rr, map[string]any{"spec": map[string]any{"signalFingerprint": "abc"}}, ErrNotHex, false},
		{"empty", rr, map[string]any{"spec": map[string]any{"signalFingerprint": ""}}, ErrEmptyKey, true},
		{"wrong type", rr, map[string]any{"spec": map[string]any{"signalFingerprint": int64(7)}}, nil, false},
	} {
		_, _, err := c.p.Key(ctx, c.obj)
		var ee *EvalError
		if !errors.As(err, &ee) || ee.Field != "spec.key.expression" || (c.err != nil && !errors.Is(err, c.err)) || IsKeyAbsent(err) != c.absent {
			t.Errorf("%s: %v (absent %v, want %v)", c.name, err, IsKeyAbsent(err), c.absent)
		}
	}
	if !rr.KeyRequired || tekton.KeyRequired {
		t.Errorf("key required: RR policy %v, Tekton sample %v; want true, false", rr.KeyRequired, tekton.KeyRequired)
	}
	keyHex, key, err := tekton.Key(ctx, labels(map[string]any{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"}))
	if err != nil || key != "shop/main" || keyHex != rules.HashKey("shop/main") {
		t.Fatalf("tekton key %q %q %v", keyHex, key, err)
	}
	if n := tekton.Name(keyHex, 12); n != "pr-"+keyHex[:32]+"-12" {
		t.Fatalf("name %s", n)
	}
}

// A Job a CronJob owns is left alone; any other is judged.
func TestJobMatchConditions(t *testing.T) {
	ctx := context.Background()
	jobs := compiled(t, "../../config/samples/batch-job.yaml")
	owned := map[string]any{"metadata": map[string]any{"ownerReferences": []any{map[string]any{"kind": "CronJob", "apiVersion": "batch/v1", "name": "nightly"}}}}
	other := map[string]any{"metadata": map[string]any{"ownerReferences": []any{map[string]any{"kind": "Workflow", "apiVersion": "argoproj.io/v1alpha1", "name": "w"}}}}
	for obj, want := range map[*map[string]any]bool{&owned: false, &other: true, {"metadata": map[string]any{}}: true} {
		if got, err := jobs.Matches(ctx, *obj); got != want || err != nil {
			t.Errorf("%v: matched %v, %v; want %v", *obj, got, err, want)
		}
	}
}

// The RR policy reads a handful of fields, and whether status and its parts exist: not the
// payload, not the rest of the status. Judged on objects decoded along what it reads, every RR of
// TestRRPolicyAgreesWithTheRules gets the same key and fact as decoded whole.
func TestReadsProjection(t *testing.T) {
	c := compiled(t, rrPolicy)
	var got []string
	for _, p := range c.Reads().Paths() {
		got = append(got, strings.Join(p, "."))
	}
	slices.Sort(got)
	want := []string{"spec.signalFingerprint", "status.completionStatus.outcome", "status.overallPhase", "status.routingStatus.nextAllowedExecution"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("reads %v, want %v", got, want)
	}
	ctx := context.Background()
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		obj := randomRR(rnd, i, now)
		obj["status"] = withNoise(obj["status"])
		b, _ := json.Marshal(obj)
		proj, err := jsonproject.Decode(b, c.Reads())
		if err != nil {
			t.Fatal(err)
		}
		var whole map[string]any
		_ = json.Unmarshal(b, &whole)
		k1, _, e1 := c.Key(ctx, whole)
		k2, _, e2 := c.Key(ctx, proj)
		f1, _ := c.Fact(ctx, whole, "n", k1, now, false)
		f2, _ := c.Fact(ctx, proj, "n", k2, now, false)
		if k1 != k2 || (e1 == nil) != (e2 == nil) || f1 != f2 {
			t.Fatalf("%s: whole %s %+v %v, projected %s %+v %v", b, k1, f1, e1, k2, f2, e2)
		}
	}
}

func withNoise(status any) any {
	st, ok := status.(map[string]any)
	if !ok {
		return status
	}
	st["message"] = strings.Repeat("m", 200)
	st["deduplication"] = map[string]any{"occurrenceCount": 7}
	return st
}

// A key of labels joined by a separator no label value holds gives the values back, so the
// consistent read selects by equality; any other key of labels does not.
func TestLabelValues(t *testing.T) {
	for _, c := range []struct {
		expr, key string
		want      map[string]string
	}{
		{"object.metadata.labels['repo'] + '/' + object.metadata.labels['branch']", "shop/main", map[string]string{"repo": "shop", "branch": "main"}},
		{"object.metadata.labels['repo'] + '/' + object.metadata.labels['branch']", "shop/", map[string]string{"repo": "shop", "branch": ""}},
		{"object.metadata.labels.app", "checkout", map[string]string{"app": "checkout"}},
		{"object.metadata.labels['a'] + ' @ ' + object.metadata.labels['b'] + ':' + object.metadata.labels['c']", "x @ y:z", map[string]string{"a": "x", "b": "y", "c": "z"}},
		{"object.metadata.labels['repo'] + '-' + object.metadata.labels['branch']", "a-b-c", nil}, // '-' can be in a value
		{"object.metadata.labels['repo'] + object.metadata.labels['branch']", "ab", nil},
		{"object.metadata.labels['repo'].lowerAscii()", "shop", nil},
	} {
		p := rrPolicyWith(func(s *rrguardv1.UniquenessPolicySpec) { s.Key.Expression = c.expr })
		comp, err := Compile(p, "")
		if err != nil {
			t.Fatal(err)
		}
		got, ok := comp.LabelValues(c.key)
		if ok != (c.want != nil) || (ok && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("%s on %q: %v %v, want %v", c.expr, c.key, got, ok, c.want)
		}
	}
}
