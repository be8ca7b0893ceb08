package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/internal/decision"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rrfacts"
	"github.com/rrguard/rrguard/internal/rules"
)

// Handler tests with policies other than the RR's: a key made of labels (the Tekton sample) and
// a SHA256 key read from a spec field.

func compile(t *testing.T, path string, edit func(*policy.Compiled)) *policy.Compiled {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := compileBytes(t, b)
	if edit != nil {
		edit(c)
	}
	return c
}

func compileBytes(t *testing.T, b []byte) *policy.Compiled {
	t.Helper()
	p, err := policy.ReadPolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Compile(p, "rrguard-system")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const specKeyed = `apiVersion: rrguard.kubernaut.ai/v1alpha1
kind: UniquenessPolicy
metadata:
  name: deploys
spec:
  target:
    group: example.com
    versions: ["v1"]
    resource: deploys
  key:
    expression: object.spec.service
    namePrefix: dep-
  inFlight: "!has(object.status) || object.status.done != true"
`

func specKeyedPolicy(t *testing.T) *policy.Compiled {
	t.Helper()
	return compileBytes(t, []byte(specKeyed))
}

func requestFor(c *policy.Compiled, kind, ns, raw string) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "u1", Operation: admissionv1.Create, Namespace: ns,
		Resource: metav1.GroupVersionResource{Group: c.GroupResource.Group, Version: c.Versions[0], Resource: c.GroupResource.Resource},
		Kind:     metav1.GroupVersionKind{Group: c.GroupResource.Group, Version: c.Versions[0], Kind: kind},
		Object:   runtime.RawExtension{Raw: []byte(raw)},
	}}
}

func pipelineRun(labels map[string]string) string {
	b, _ := json.Marshal(map[string]any{"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
		"metadata": map[string]any{"generateName": "build-", "labels": labels}})
	return string(b)
}

// factLister is a consistent read that returns given facts, counting its calls.
type factLister struct {
	facts []decision.Fact
	calls int
}

func (l *factLister) ReadKey(context.Context, string, string, string) ([]decision.Fact, error) {
	l.calls++
	return l.facts, nil
}

func patchOf(t *testing.T, resp admission.Response) string {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	b, _ := json.Marshal(resp.Patches)
	return string(b)
}

func TestLabelKeyedPolicy(t *testing.T) {
	tekton := compile(t, "../config/samples/tekton-pipelinerun.yaml", nil)
	ctx := context.Background()
	labels := map[string]string{"ci.example.com/repo": "shop", "ci.example.com/branch": "main"}
	keyHex := rules.HashKey("shop/main")
	first := tekton.Name(keyHex, 1)

	l := &factLister{}
	h := &Namer{Policy: tekton, Lister: l, Now: func() time.Time { return now }}
	if got, want := patchOf(t, h.Handle(ctx, requestFor(tekton, "PipelineRun", "ci", pipelineRun(labels)))),
		`[{"op":"add","path":"/metadata/name","value":"`+first+`"},{"op":"remove","path":"/metadata/generateName"}]`; got != want {
		t.Fatalf("patch %s, want %s", got, want)
	}

	l.facts = []decision.Fact{{Name: first, N: 1, Until: decision.Forever, Created: now.Add(-time.Minute)}}
	resp := h.Handle(ctx, requestFor(tekton, "PipelineRun", "ci", pipelineRun(labels)))
	if resp.Allowed || resp.Result.Code != http.StatusConflict || resp.Result.Details == nil || resp.Result.Details.Name != first ||
		!strings.Contains(resp.Result.Message, "a PipelineRun of this repository and branch is already in flight") {
		t.Fatalf("a second run while %s is in flight: %+v", first, resp.Result)
	}

	// Without its labels a PipelineRun is not the policy's: created as sent, counted.
	before := testutil.ToFloat64(keyless.WithLabelValues(tekton.Policy))
	for _, lb := range []map[string]string{nil, {"ci.example.com/repo": "shop"}} {
		resp := h.Handle(ctx, requestFor(tekton, "PipelineRun", "ci", pipelineRun(lb)))
		if !resp.Allowed || len(resp.Patches) != 0 {
			t.Fatalf("labels %v: allowed %v, patches %v: %+v", lb, resp.Allowed, resp.Patches, resp.Result)
		}
		if resp := (&Checker{Policy: tekton}).Handle(ctx, requestFor(tekton, "PipelineRun", "ci", pipelineRun(lb))); !resp.Allowed {
			t.Fatalf("labels %v: the name check refused a PipelineRun the policy leaves alone: %+v", lb, resp.Result)
		}
	}
	if got := testutil.ToFloat64(keyless.WithLabelValues(tekton.Policy)) - before; got != 2 {
		t.Fatalf("rrguard_policy_keyless_creates_total rose by %v, want 2", got)
	}

	// A policy that requires its key refuses one without, saying which policy, which field, and
	// how to exempt it.
	required := compile(t, "../config/samples/tekton-pipelinerun.yaml", func(c *policy.Compiled) { c.KeyRequired = true })
	resp = (&Namer{Policy: required, Lister: &factLister{}}).Handle(ctx, requestFor(required, "PipelineRun", "ci", pipelineRun(nil)))
	if resp.Allowed || resp.Result.Code != http.StatusUnprocessableEntity || resp.Result.Details == nil ||
		len(resp.Result.Details.Causes) != 1 || resp.Result.Details.Causes[0].Field != "metadata.labels" {
		t.Fatalf("required key absent: %+v", resp.Result)
	}
	for _, want := range []string{"policy tekton-pipelineruns", "spec.key.required", "match condition"} {
		if !strings.Contains(resp.Result.Message, want) {
			t.Errorf("required key absent: %q does not say %q", resp.Result.Message, want)
		}
	}
}

func TestSHA256KeyedPolicy(t *testing.T) {
	p := specKeyedPolicy(t)
	ctx := context.Background()
	keyHex := rules.HashKey("checkout")
	l := &factLister{facts: []decision.Fact{{Name: p.Name(keyHex, 3), N: 3, Created: now.Add(-time.Hour)}}}
	h := &Namer{Policy: p, Lister: l, Now: func() time.Time { return now }}
	raw := `{"metadata":{"name":"mine"},"spec":{"service":"checkout"}}`
	if got, want := patchOf(t, h.Handle(ctx, requestFor(p, "Deploy", "prod", raw))),
		`[{"op":"add","path":"/metadata/name","value":"dep-`+keyHex[:32]+`-4"}]`; got != want {
		t.Fatalf("patch %s, want %s", got, want)
	}
	// A key of the wrong type is the object's fault, not an absent key: refused.
	resp := h.Handle(ctx, requestFor(p, "Deploy", "prod", `{"spec":{"service":7}}`))
	if resp.Allowed || resp.Result.Code != http.StatusUnprocessableEntity {
		t.Fatalf("a number for a key: %+v", resp.Result)
	}
}

// index is an Index whose answers a test sets.
type index struct {
	lookups  [][]decision.Fact
	errs     []error
	marked   bool
	fresh    bool
	awaited  int
	lookedUp int
}

func (x *index) Lookup(string, string, time.Time) ([]decision.Fact, error) {
	i := x.lookedUp
	x.lookedUp++
	return x.lookups[i], x.errs[i]
}
func (x *index) MayBeMarked(string, string) bool { return x.marked }
func (x *index) AwaitFresh(context.Context, string, time.Duration) bool {
	x.awaited++
	return x.fresh
}

// markCount is a MarkReader that counts its reads.
type markCount struct {
	mark  int64
	reads int
}

func (m *markCount) Get(context.Context, string, string) (int64, error) {
	m.reads++
	return m.mark, nil
}

// The Namer's branches that read nothing, wait for the index, or answer before deciding.
func TestNamerBranches(t *testing.T) {
	p := specKeyedPolicy(t)
	ctx := context.Background()
	keyHex := rules.HashKey("checkout")
	raw := `{"metadata":{"generateName":"x-"},"spec":{"service":"checkout"}}`
	req := requestFor(p, "Deploy", "prod", raw)
	named := func(n int64) string {
		return `[{"op":"add","path":"/metadata/name","value":"` + p.Name(keyHex, n) + `"},{"op":"remove","path":"/metadata/generateName"}]`
	}

	t.Run("a new key: no read", func(t *testing.T) {
		l, m := &factLister{}, &markCount{}
		h := &Namer{Policy: p, Lister: l, Marks: m, Index: &index{lookups: [][]decision.Fact{nil}, errs: []error{nil}}}
		if got := patchOf(t, h.Handle(ctx, req)); got != named(1) || l.calls != 0 || m.reads != 0 {
			t.Fatalf("patch %s, %d lists, %d mark reads; want %s and no read", got, l.calls, m.reads, named(1))
		}
	})
	t.Run("a key that may be marked: the mark only", func(t *testing.T) {
		l, m := &factLister{}, &markCount{mark: 6}
		h := &Namer{Policy: p, Lister: l, Marks: m, Index: &index{lookups: [][]decision.Fact{nil}, errs: []error{nil}, marked: true}}
		if got := patchOf(t, h.Handle(ctx, req)); got != named(7) || l.calls != 0 || m.reads != 1 {
			t.Fatalf("patch %s, %d lists, %d mark reads; want %s, the mark read once", got, l.calls, m.reads, named(7))
		}
	})
	t.Run("an index not fresh: waited for, then used", func(t *testing.T) {
		l := &factLister{}
		x := &index{lookups: [][]decision.Fact{nil, nil}, errs: []error{&rrfacts.Untrusted{Reason: rrfacts.ReasonNotFresh}, nil}, fresh: true}
		h := &Namer{Policy: p, Lister: l, Index: x}
		if got := patchOf(t, h.Handle(ctx, req)); got != named(1) || x.awaited != 1 || x.lookedUp != 2 || l.calls != 0 {
			t.Fatalf("patch %s, awaited %d, lookups %d, lists %d", got, x.awaited, x.lookedUp, l.calls)
		}
	})
	t.Run("an index still not fresh: a consistent read", func(t *testing.T) {
		l := &factLister{facts: []decision.Fact{{Name: p.Name(keyHex, 2), N: 2, Created: now.Add(-time.Hour)}}}
		x := &index{lookups: [][]decision.Fact{nil}, errs: []error{&rrfacts.Untrusted{Reason: rrfacts.ReasonNotFresh}}}
		h := &Namer{Policy: p, Lister: l, Index: x}
		if got := patchOf(t, h.Handle(ctx, req)); got != named(3) || x.awaited != 1 || l.calls != 1 {
			t.Fatalf("patch %s, awaited %d, lists %d", got, x.awaited, l.calls)
		}
	})
	t.Run("not ready: 503", func(t *testing.T) {
		h := &Namer{Policy: p, Lister: &factLister{}, Ready: func() error { return errors.New("marks not seeded") }}
		resp := h.Handle(ctx, req)
		if resp.Allowed || resp.Result.Code != http.StatusServiceUnavailable || !strings.Contains(resp.Result.Message, "marks not seeded") {
			t.Fatalf("%+v", resp.Result)
		}
	})
	t.Run("a namespace left alone: no read, no patch", func(t *testing.T) {
		l := &factLister{}
		h := &Namer{Policy: p, Lister: l, LeaveAlone: func(ns string) bool { return ns == "prod" },
			Ready: func() error { return errors.New("never asked") }}
		resp := h.Handle(ctx, req)
		if !resp.Allowed || len(resp.Patches) != 0 || l.calls != 0 {
			t.Fatalf("allowed %v, patches %v, lists %d", resp.Allowed, resp.Patches, l.calls)
		}
	})
	t.Run("a namespace not judged: 403", func(t *testing.T) {
		h := &Namer{Policy: p, Lister: &factLister{}, Judged: func(string) bool { return false }}
		resp := h.Handle(ctx, req)
		if resp.Allowed || !apierrors.IsForbidden(apierrors.FromObject(resp.Result)) {
			t.Fatalf("%+v", resp.Result)
		}
	})
}
