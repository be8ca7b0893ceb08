package rrfacts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/jsonproject"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut"
)

const finalizer = "rrguard.kubernaut.ai/high-water-mark"

func markKey(namespace, fp string) string { return namespace + "." + fp[:rules.KeyLen] }

func fingerprint(i int) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(i)))
	return hex.EncodeToString(sum[:])
}

// kubernautRR is an RR as Kubernaut stores it: a 2 KB payload, labels, annotations, managed
// fields and a status with many fields rrguard's types do not model (Kubernaut's CRD has 100+).
func kubernautRR(ns string, i int, phase string) map[string]any {
	fp := fingerprint(i)
	status := map[string]any{
		"overallPhase": phase,
		"message":      strings.Repeat("m", 200),
		"deduplication": map[string]any{
			"firstSeenAt": "2026-11-30T07:00:00Z", "lastSeenAt": "2026-11-30T07:00:00Z", "occurrenceCount": 7,
		},
		"completionStatus": map[string]any{"outcome": "Remediated", "failureReason": strings.Repeat("f", 100)},
		"routingStatus":    map[string]any{"blockReason": "none", "duplicateOf": "rr-x", "duplicateCount": 3},
		"conditions": []any{map[string]any{
			"type": "Ready", "status": "True", "reason": "Done", "message": strings.Repeat("c", 200),
			"lastTransitionTime": "2026-11-30T07:00:00Z",
		}},
	}
	for k := range 100 {
		status[fmt.Sprintf("kubernautField%03d", k)] = strings.Repeat("s", 24)
	}
	return map[string]any{
		"apiVersion": "kubernaut.ai/v1alpha1", "kind": "RemediationRequest",
		"metadata": map[string]any{
			"name": rules.Name(fp, 1), "namespace": ns, "resourceVersion": fmt.Sprint(1000 + i),
			"uid": fmt.Sprintf("00000000-0000-0000-0000-%012d", i), "creationTimestamp": "2026-11-30T07:00:00Z",
			"finalizers":  []any{finalizer},
			"labels":      map[string]any{"kubernaut.ai/signal": "KubePodCrashLooping", "app": "checkout"},
			"annotations": map[string]any{"kubernaut.ai/source": strings.Repeat("a", 100)},
			"managedFields": []any{map[string]any{
				"manager": "gateway", "operation": "Update", "apiVersion": "kubernaut.ai/v1alpha1",
				"fieldsType": "FieldsV1", "fieldsV1": map[string]any{"f:spec": map[string]any{"f:x": strings.Repeat("z", 300)}},
			}},
		},
		"spec": map[string]any{
			"signalFingerprint": fp, "signalName": "KubePodCrashLooping", "severity": "critical",
			"signalType": "alert", "targetType": "kubernetes",
			"targetResource": map[string]any{"kind": "Deployment", "name": "checkout", "namespace": "shop"},
			"firingTime":     "2026-11-30T07:00:00Z", "receivedTime": "2026-11-30T07:00:00Z",
			"originalPayload": strings.Repeat("p", 2048), "providerData": strings.Repeat("d", 256),
			"signalLabels": map[string]any{"alertname": "KubePodCrashLooping", "namespace": "shop"},
		},
		"status": status,
	}
}

func decode(t testing.TB, v any) *object {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	o := object{rd: newReading(rrPolicy(), rrKind, finalizer)}
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return &o
}

var (
	rrKind = v1alpha1.GroupVersion.WithKind("RemediationRequest")
	prKind = schema.GroupVersionKind{Group: "tekton.dev", Version: "v1", Kind: "PipelineRun"}
)

var rrPolicy = sync.OnceValue(func() *policy.Compiled {
	c, err := policy.RemediationRequests()
	if err != nil {
		panic(err)
	}
	return c
})

// testIndex is an index whose one feed is fed by hand, as its reflector would.
func testIndex(maxLag time.Duration) (*Index, *feed) {
	ix := &Index{o: Options{Finalizer: finalizer, MaxLag: maxLag, MarkKey: markKey, Policy: rrPolicy()},
		rd: newReading(rrPolicy(), rrKind, finalizer), nss: map[string]*nsFacts{}, marked: newMarked(), phases: map[string]string{}}
	f := &feed{ix: ix, advanced: make(chan struct{})}
	ix.feeds = []*feed{f}
	return ix, f
}

// The decode keeps exactly what the decision reads from a full Kubernaut RR.
func TestDecodeKeepsDecisionFields(t *testing.T) {
	raw := kubernautRR("kubernaut-system", 7, "Completed")
	raw["metadata"].(map[string]any)["deletionTimestamp"] = "2026-11-30T08:00:00Z"
	raw["metadata"].(map[string]any)["annotations"].(map[string]any)[metav1.InitialEventsAnnotationKey] = "true"
	st := raw["status"].(map[string]any)
	st["completionStatus"].(map[string]any)["outcome"] = "ManualReviewRequired"
	st["routingStatus"].(map[string]any)["nextAllowedExecution"] = "2026-11-30T09:00:00Z"
	o := decode(t, raw)
	m := o.GetObjectMeta()
	if m.GetName() != rules.Name(fingerprint(7), 1) || m.GetNamespace() != "kubernaut-system" || m.GetResourceVersion() != "1007" {
		t.Fatalf("metadata: %+v", m)
	}
	if m.GetAnnotations()[metav1.InitialEventsAnnotationKey] != "true" {
		t.Fatal("the watch-list bookmark annotation was dropped: the reflector would never sync")
	}
	if len(m.GetAnnotations()) != 1 {
		t.Fatalf("annotations kept: %v; only the bookmark's is read", m.GetAnnotations())
	}
	// Only what the policy reads is decoded for its verdict: no payload, no other status field.
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	projected, err := jsonproject.Decode(b, o.rd.tree)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := projected["spec"].(map[string]any)["originalPayload"]; ok {
		t.Fatal("the payload was decoded")
	}
	if st := projected["status"].(map[string]any); len(st) != 3 || st["overallPhase"] != "Completed" {
		t.Fatalf("status decoded: %v", st)
	}
	if v := o.verdict; v.keyHex != fingerprint(7) || v.fact.Phase != "Completed" || v.fact.N != 1 || v.err != nil {
		t.Fatalf("verdict %+v", v)
	}
	ix, f := testIndex(time.Minute)
	f.noteCall()
	if err := f.Replace([]any{o}, "1"); err != nil {
		t.Fatal(err)
	}
	facts, err := ix.Lookup("kubernaut-system", fingerprint(7), time.Now())
	if err != nil || len(facts) != 1 || facts[0].N != 1 || facts[0].Phase != "Completed" || facts[0].InFlight(time.Now()) {
		t.Fatalf("facts %+v, %v", facts, err)
	}
	var all []RR
	ix.Each(func(rr RR) { all = append(all, rr) })
	if len(all) != 1 || !all[0].Finalized || all[0].DeletedAt.IsZero() {
		t.Fatalf("releaser's facts %+v", all)
	}
}

// The index applies the in-flight rule exactly as kubernaut.InFlight does on the typed RR, for random
// statuses decoded from the same JSON.
func TestInFlightAgreesWithTheRule(t *testing.T) {
	phases := []string{"", "Pending", "Blocked", "Completed", "Failed", "TimedOut", "Skipped", "Cancelled", "SomethingNew"}
	outcomes := []string{"", "Remediated", "ManualReviewRequired", "Inconclusive"}
	now := time.Now()
	rnd := rand.New(rand.NewPCG(1, 2))
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	for i := range 2000 {
		raw := kubernautRR("ns", i, phases[rnd.IntN(len(phases))])
		st := raw["status"].(map[string]any)
		st["completionStatus"].(map[string]any)["outcome"] = outcomes[rnd.IntN(len(outcomes))]
		switch rnd.IntN(3) {
		case 0:
			st["routingStatus"].(map[string]any)["nextAllowedExecution"] = now.Add(time.Hour).UTC().Format(time.RFC3339)
		case 1:
			st["routingStatus"].(map[string]any)["nextAllowedExecution"] = now.Add(-time.Hour).UTC().Format(time.RFC3339)
		}
		if rnd.IntN(4) == 0 {
			raw["metadata"].(map[string]any)["deletionTimestamp"] = now.UTC().Format(time.RFC3339)
		}
		b, _ := json.Marshal(raw)
		var typed v1alpha1.RemediationRequest
		if err := json.Unmarshal(b, &typed); err != nil {
			t.Fatal(err)
		}
		// As the index stores it: one instant per RR, in whole seconds.
		if err := f.Add(decode(t, raw)); err != nil {
			t.Fatal(err)
		}
		facts, err := ix.Lookup("ns", typed.Spec.SignalFingerprint, now)
		if err != nil || len(facts) != 1 {
			t.Fatalf("lookup: %v, %v", facts, err)
		}
		if got, want := facts[0].InFlight(now), kubernaut.InFlight(&typed, now); got != want {
			t.Fatalf("status %s: index says in flight %v, the rule %v", b, got, want)
		}
	}
}

func TestLookupOnlyWhileFresh(t *testing.T) {
	ix, f := testIndex(2 * time.Second)
	var u *Untrusted
	if _, err := ix.Lookup("ns", fingerprint(1), time.Now()); !errors.As(err, &u) || u.Reason != ReasonNotSynced {
		t.Fatalf("before the first list: %v", err)
	}
	f.noteCall()
	if err := f.Replace(nil, "1"); err != nil {
		t.Fatal(err)
	}
	if facts, err := ix.Lookup("ns", fingerprint(1), time.Now()); err != nil || len(facts) != 0 {
		t.Fatalf("fresh after the list: %v, %v", facts, err)
	}
	if _, err := ix.Lookup("ns", fingerprint(1), time.Now().Add(3*time.Second)); !errors.As(err, &u) || u.Reason != ReasonNotFresh {
		t.Fatalf("3 s after the list, with a 2 s lag allowed: %v", err)
	}
	// A create stamped later proves the index complete up to it.
	raw := kubernautRR("ns", 1, "")
	raw["metadata"].(map[string]any)["creationTimestamp"] = time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339)
	if err := f.Add(decode(t, raw)); err != nil {
		t.Fatal(err)
	}
	facts, err := ix.Lookup("ns", fingerprint(1), time.Now().Add(3*time.Second))
	if err != nil || len(facts) != 1 || !facts[0].InFlight(time.Now()) {
		t.Fatalf("after a create: %+v, %v", facts, err)
	}
	// A zero lag never vouches.
	ix.o.MaxLag = 0
	if _, err := ix.Lookup("ns", fingerprint(1), time.Now()); !errors.As(err, &u) || u.Reason != ReasonNotFresh {
		t.Fatalf("with no lag allowed: %v", err)
	}
}

func TestUpdatesAndDeletes(t *testing.T) {
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	var notified []string
	ix.o.OnDeleting = func(ns, name string) { notified = append(notified, ns+"/"+name) }
	legacy := kubernautRR("ns", 1, "Pending")
	legacy["metadata"].(map[string]any)["name"] = "rr-legacy-abcdef"
	scheme := kubernautRR("ns", 1, "Completed")
	scheme["metadata"].(map[string]any)["name"] = rules.Name(fingerprint(1), 4)
	for _, o := range []map[string]any{legacy, scheme} {
		if err := f.Add(decode(t, o)); err != nil {
			t.Fatal(err)
		}
	}
	facts, err := ix.Lookup("ns", fingerprint(1), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(facts) != 2 || ix.Len() != 2 {
		t.Fatalf("facts %+v", facts)
	}
	// Deletion asked for: the releaser is told.
	scheme["metadata"].(map[string]any)["deletionTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	must(t, f.Update(decode(t, scheme)))
	if len(notified) != 1 || notified[0] != "ns/"+rules.Name(fingerprint(1), 4) {
		t.Fatalf("notified %v", notified)
	}
	must(t, f.Delete(decode(t, legacy)))
	if facts, err = ix.Lookup("ns", fingerprint(1), time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(facts) != 1 || facts[0].N != 4 || facts[0].Name != rules.Name(fingerprint(1), 4) {
		t.Fatalf("after the legacy RR's delete: %+v", facts)
	}
	must(t, f.Delete(decode(t, scheme)))
	if facts, err := ix.Lookup("ns", fingerprint(1), time.Now()); err != nil || len(facts) != 0 || ix.Len() != 0 {
		t.Fatalf("after the last delete: %+v", facts)
	}
}

// The index costs what the decision reads, not what an RR carries: 20,000 RRs of Kubernaut's full
// shape (2 KB payload, 100 more status fields, managed fields) must stay under 400 bytes each of
// live heap. A cache that kept the RRs would cost several KB each.
func TestMemoryPerRR(t *testing.T) {
	const n = 20000
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	template, _ := json.Marshal(kubernautRR("kubernaut-system", 0, "Completed"))
	for i := range n {
		raw := strings.ReplaceAll(string(template), fingerprint(0), fingerprint(i))
		raw = strings.ReplaceAll(raw, fingerprint(0)[:rules.KeyLen], fingerprint(i)[:rules.KeyLen])
		o := object{rd: ix.rd}
		if err := json.Unmarshal([]byte(raw), &o); err != nil {
			t.Fatal(err)
		}
		must(t, f.Add(&o))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes of live heap per RR (%d RRs)", per, ix.Len())
	if ix.Len() != n {
		t.Fatalf("%d RRs indexed, want %d", ix.Len(), n)
	}
	if per > 400 {
		t.Fatalf("%.0f bytes per RR: the index holds more than the decision reads", per)
	}
	runtime.KeepAlive(ix)
}

// MayBeMarked says yes until the marks are loaded, then only for fingerprints with a mark noted or
// an RR seen deleted (a Bloom filter: no false "no"; a few false "maybe").
func TestMayBeMarked(t *testing.T) {
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	if !ix.MayBeMarked("ns", fingerprint(1)) {
		t.Fatal("before the marks are loaded, any fingerprint may have one")
	}
	ix.NoteMarked(markKey("ns", fingerprint(1)))
	ix.LoadedMarks()
	if !ix.MayBeMarked("ns", fingerprint(1)) || ix.MayBeMarked("other", fingerprint(1)) {
		t.Fatal("a noted mark must be found, in its namespace only")
	}
	raw := kubernautRR("ns", 2, "Completed")
	must(t, f.Add(decode(t, raw)))
	// Neither the live RR's fingerprint nor two never seen were marked or deleted: with one mark
	// noted, the filter has no false "maybe" for them (its hashes are fixed, so this is exact).
	for _, n := range []int{2, 3, 4} {
		if ix.MayBeMarked("ns", fingerprint(n)) {
			t.Fatalf("fingerprint %d looks marked", n)
		}
	}
	must(t, f.Delete(decode(t, raw)))
	if !ix.MayBeMarked("ns", fingerprint(2)) {
		t.Fatal("a fingerprint whose RR was deleted may have a mark")
	}
	// A relist may hide deletions: every fingerprint it replaces may have a mark.
	must(t, f.Add(decode(t, kubernautRR("ns", 5, ""))))
	f.noteCall()
	must(t, f.Replace(nil, "2"))
	if !ix.MayBeMarked("ns", fingerprint(5)) {
		t.Fatal("an RR gone across a relist left its fingerprint unmarked")
	}
	// No false "no" over 200,000 keys; few false "maybe" beside them.
	m := newMarked()
	for i := range 200000 {
		m.add(markKey("ns", fingerprint(i)))
	}
	for i := range 200000 {
		if !m.has(markKey("ns", fingerprint(i))) {
			t.Fatalf("key %d added but not found", i)
		}
	}
	fp := 0
	for i := 200000; i < 300000; i++ {
		if m.has(markKey("ns", fingerprint(i))) {
			fp++
		}
	}
	if fp > 1000 {
		t.Fatalf("%d false positives in 100,000 at 200,000 keys", fp)
	}
}

// After a quiet spell, the first decision reads (AwaitFresh false at once); the next ones wait
// for the create that proves the index complete again, and use the index; without one, they give
// up after the wait.
func TestAwaitFresh(t *testing.T) {
	ix, f := testIndex(2 * time.Second)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	ctx := context.Background()
	if !ix.AwaitFresh(ctx, "ns", time.Second) {
		t.Fatal("a fresh index needs no wait")
	}
	f.mu.Lock()
	f.completeAsOf = time.Now().Add(-time.Minute) // a quiet spell
	f.mu.Unlock()
	start := time.Now()
	if ix.AwaitFresh(ctx, "ns", 5*time.Second) || time.Since(start) > 100*time.Millisecond {
		t.Fatal("the first decision after a quiet spell must read at once")
	}
	got := make(chan bool)
	go func() { got <- ix.AwaitFresh(ctx, "ns", 5*time.Second) }()
	raw := kubernautRR("ns", 1, "")
	raw["metadata"].(map[string]any)["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
	must(t, f.Add(decode(t, raw)))
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("a create stamped now did not make the waiting decision use the index")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting decision was not woken")
	}
	// Quiet again, and nothing comes: the waiter gives up when the probe window ends.
	f.mu.Lock()
	f.completeAsOf, f.probeUntil = time.Now().Add(-time.Minute), time.Time{}
	f.mu.Unlock()
	_ = ix.AwaitFresh(ctx, "ns", 200*time.Millisecond) // the prober
	start = time.Now()
	if ix.AwaitFresh(ctx, "ns", 200*time.Millisecond) {
		t.Fatal("fresh without any create")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waited %s past a 200 ms window", d)
	}
}

// What the releaser and the seeder read: the creation time, and Covered, which NoteCovered sets
// for the numbers at or below the mark seen, and which survives a relist of the same RR.
func TestCoveredAndCreated(t *testing.T) {
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	one, two := kubernautRR("ns", 1, "Completed"), kubernautRR("ns", 1, "")
	two["metadata"].(map[string]any)["name"] = rules.Name(fingerprint(1), 2)
	created := time.Date(2026, 11, 30, 7, 0, 5, 0, time.UTC)
	one["metadata"].(map[string]any)["creationTimestamp"] = created.Format(time.RFC3339)
	must(t, f.Add(decode(t, one)))
	must(t, f.Add(decode(t, two)))
	facts := func() map[int64]Fact {
		out := map[int64]Fact{}
		ix.Each(func(rr RR) { out[rr.N] = rr.Fact })
		return out
	}
	if got := facts(); !got[1].Created.Equal(created) || got[1].Covered || got[2].Covered {
		t.Fatalf("before any mark: %+v", got)
	}
	ix.NoteCovered("ns", fingerprint(1), 1)
	ix.NoteCovered("other", fingerprint(1), 2)
	if got := facts(); !got[1].Covered || got[2].Covered {
		t.Fatalf("mark 1 in ns (and 2 in another namespace) seen: %+v", got)
	}
	// A relist keeps what was known of the RR it lists again, and nothing of one it does not.
	f.noteCall()
	must(t, f.Replace([]any{decode(t, one), decode(t, two)}, "2"))
	if got := facts(); !got[1].Covered || got[2].Covered {
		t.Fatalf("after a relist: %+v", got)
	}
	f.noteCall()
	must(t, f.Replace([]any{decode(t, two)}, "3"))
	must(t, f.Add(decode(t, one)))
	if got := facts(); got[1].Covered {
		t.Fatalf("an RR gone across a relist and seen again must be verified again: %+v", got)
	}
}

// BenchmarkWatchEvent is what one watch event of a Kubernaut-shaped RR costs the index: decode
// along the policy's reads, judge, store. BenchmarkWatchEventWhole decodes the same object whole,
// as a map (what judging it without the projection would start from).
func BenchmarkWatchEvent(b *testing.B) {
	ix, f := testIndex(time.Hour)
	f.noteCall()
	must(b, f.Replace(nil, "1"))
	raw, _ := json.Marshal(kubernautRR("kubernaut-system", 1, "Completed"))
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	dec := projecting{kind: rrKind, rd: ix.rd}
	for b.Loop() {
		o, _, err := dec.Decode(raw, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Update(o); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWatchEventWhole(b *testing.B) {
	raw, _ := json.Marshal(kubernautRR("kubernaut-system", 1, "Completed"))
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			b.Fatal(err)
		}
	}
}

// pipelineRun is a PipelineRun as Tekton stores one, roughly: labels, a pipelineRef and params, a
// status with conditions, child references and a copy of the pipeline spec.
func pipelineRun(ns string, i int) map[string]any {
	return map[string]any{
		"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
		"metadata": map[string]any{
			"name": fmt.Sprintf("pr-%032x-1", i), "namespace": ns, "resourceVersion": fmt.Sprint(1000 + i),
			"uid": fmt.Sprintf("00000000-0000-0000-0000-%012d", i), "creationTimestamp": "2026-12-04T07:00:00Z",
			"finalizers": []any{finalizer},
			"labels": map[string]any{"ci.example.com/repo": fmt.Sprint("repo-", i), "ci.example.com/branch": "main",
				"tekton.dev/pipeline": "build", "triggers.tekton.dev/eventlistener": "github"},
			"annotations": map[string]any{"pipelinesascode.tekton.dev/sha": strings.Repeat("a", 40)},
		},
		"spec": map[string]any{"pipelineRef": map[string]any{"name": "build"},
			"params": []any{map[string]any{"name": "revision", "value": strings.Repeat("r", 40)}, map[string]any{"name": "url", "value": strings.Repeat("u", 80)}}},
		"status": map[string]any{
			"conditions":      []any{map[string]any{"type": "Succeeded", "status": "Unknown", "reason": "Running", "message": strings.Repeat("m", 100)}},
			"childReferences": []any{map[string]any{"name": "task-1", "pipelineTaskName": "build", "kind": "TaskRun"}},
			"pipelineSpec":    map[string]any{"tasks": []any{map[string]any{"name": "build", "taskRef": map[string]any{"name": "buildah"}, "params": strings.Repeat("p", 1024)}}},
			"startTime":       "2026-12-04T07:00:01Z",
		},
	}
}

func tektonIndex(t testing.TB) (*Index, *feed) {
	t.Helper()
	b, err := os.ReadFile("../../config/samples/tekton-pipelinerun.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.ReadPolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := policy.Compile(p, "")
	if err != nil {
		t.Fatal(err)
	}
	ix := &Index{o: Options{Finalizer: finalizer, MaxLag: time.Hour, MarkKey: markKey, Policy: c},
		rd: newReading(c, prKind, finalizer), nss: map[string]*nsFacts{}, marked: newMarked(), phases: map[string]string{}}
	f := &feed{ix: ix, advanced: make(chan struct{})}
	ix.feeds = []*feed{f}
	f.noteCall()
	must(t, f.Replace(nil, "1"))
	return ix, f
}

// A generic target costs the index what its policy reads: 100,000 PipelineRuns (about 2 KB each)
// under 400 bytes each of live heap, every one in flight under its own key.
func TestMemoryPerPipelineRun(t *testing.T) {
	const n = 100000
	ix, f := tektonIndex(t)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	dec := projecting{kind: prKind, rd: ix.rd}
	for i := range n {
		raw, _ := json.Marshal(pipelineRun("ci", i))
		o, _, err := dec.Decode(raw, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		must(t, f.Add(o))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes of live heap per PipelineRun (%d indexed)", per, ix.Len())
	facts, err := ix.Lookup("ci", rules.HashKey("repo-7/main"), time.Now())
	if ix.Len() != n || err != nil || len(facts) != 1 || !facts[0].InFlight(time.Now()) {
		t.Fatalf("%d indexed; repo-7/main: %+v, %v", ix.Len(), facts, err)
	}
	if per > 400 {
		t.Fatalf("%.0f bytes per PipelineRun", per)
	}
	runtime.KeepAlive(ix)
}

// BenchmarkWatchEventPipelineRun is BenchmarkWatchEvent for the Tekton sample's target.
func BenchmarkWatchEventPipelineRun(b *testing.B) {
	ix, f := tektonIndex(b)
	raw, _ := json.Marshal(pipelineRun("ci", 1))
	dec := projecting{kind: prKind, rd: ix.rd}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		o, _, err := dec.Decode(raw, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Update(o); err != nil {
			b.Fatal(err)
		}
	}
}

// must fails the test on an error of the code under test (the informer's store calls).
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// The first list of a target is read one item at a time: decoding 5,000 Kubernaut-shaped RRs (a
// 2 KB payload each) allocates at least the response's size less than reading it whole, as the
// reflector's list did (which costs the body once more before the first item is decoded), so no
// copy of the whole response is made; and it decodes what the whole-body decode does.
func TestListStreamHoldsNoBody(t *testing.T) {
	const n = 5000
	body := rrList(t, n)
	rd := newReading(rrPolicy(), rrKind, finalizer)
	var err error
	allocatedBy := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var got *objectList
	streamed := allocatedBy(func() { got, err = decodeListStream(bytes.NewReader(body), rd) })
	if err != nil {
		t.Fatal(err)
	}
	whole := &objectList{rd: rd}
	wholeAlloc := allocatedBy(func() {
		read, _ := io.ReadAll(bytes.NewReader(body))
		err = whole.UnmarshalJSON(read)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a %d-byte list of %d RRs: streamed, %d bytes allocated (%.0f per RR); read whole, %d", len(body), n, streamed, float64(streamed)/n, wholeAlloc)
	if streamed+uint64(len(body)) > wholeAlloc {
		t.Errorf("decoding a %d-byte list allocated %d bytes, read whole %d: the stream made a copy of the response", len(body), streamed, wholeAlloc)
	}
	if got.ResourceVersion != "4242" || got.Continue != "next" || got.Kind != "RemediationRequestList" || len(got.Items) != n {
		t.Fatalf("list metadata %+v %+v, %d items", got.TypeMeta, got.ListMeta, len(got.Items))
	}
	for i := range got.Items {
		if !reflect.DeepEqual(got.Items[i].Meta, whole.Items[i].Meta) || !reflect.DeepEqual(got.Items[i].verdict, whole.Items[i].verdict) {
			t.Fatalf("item %d: streamed %+v, whole %+v", i, got.Items[i], whole.Items[i])
		}
	}
	for _, bad := range []string{`[]`, `{"items": {}}`, `{"items": [1}`, `{"kind": "X"`} {
		if _, err := decodeListStream(strings.NewReader(bad), rd); err == nil {
			t.Errorf("%s: decoded without error", bad)
		}
	}
}

// A list waiting in the reflector costs its objects' verdicts, not their projections: a first list
// of 100,000 is held whole until the reflector hands it to the index (Replace), and was the
// start-up peak (2.2 KB per Kubernaut-shaped RR, docs/benchmarks.md). 5,000 RRs with a 2 KB
// payload each, decoded as the reflector's list is, must hold under maxListed bytes each of live
// heap.
func TestListedObjectsHoldTheirVerdictsOnly(t *testing.T) {
	// The object, its verdict and metadata strings are about 500 bytes; a projection is 2,200.
	const maxListed = 700
	const n = 5000
	body := rrList(t, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC() // the second empties sync.Pools (the JSON encoder's buffer)
	runtime.ReadMemStats(&before)
	list, err := decodeListStream(bytes.NewReader(body), newReading(rrPolicy(), rrKind, finalizer))
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	t.Logf("%.0f bytes of live heap per listed RR (%d listed, %d-byte list)", per, len(list.Items), len(body))
	if len(list.Items) != n || list.Items[n-1].verdict.keyHex != fingerprint(n-1) {
		t.Fatalf("%d items; last verdict %+v", len(list.Items), list.Items[n-1].verdict)
	}
	if per > maxListed {
		t.Fatalf("%.0f bytes per listed RR: the list holds more than the verdicts", per)
	}
	runtime.KeepAlive(list)
	runtime.KeepAlive(body)
}

// rrList is the JSON of a list of n Kubernaut-shaped RRs with a 2 KB payload each.
func rrList(t *testing.T, n int) []byte {
	t.Helper()
	items := make([]any, n)
	for i := range items {
		rr := kubernautRR("kubernaut-system", i, "Completed")
		rr["spec"].(map[string]any)["originalPayload"] = strings.Repeat("p", 2048)
		items[i] = rr
	}
	body, err := json.Marshal(map[string]any{"apiVersion": "kubernaut.ai/v1alpha1", "kind": "RemediationRequestList",
		"metadata": map[string]any{"resourceVersion": "4242", "continue": "next"}, "items": items})
	if err != nil {
		t.Fatal(err)
	}
	return body
}
