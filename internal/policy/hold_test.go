package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
)

func op(o, path, value string) v1alpha1.PatchOperation {
	p := v1alpha1.PatchOperation{Op: o, Path: path}
	if value != "" {
		p.Value = &apiextensionsv1.JSON{Raw: []byte(value)}
	}
	return p
}

// Every way spec.concurrency can be wrong is an InvalidSpec naming the field; none compiles.
func TestConcurrencyRefused(t *testing.T) {
	hold := []v1alpha1.PatchOperation{op("add", "/spec/suspend", "true")}
	release := []v1alpha1.PatchOperation{op("replace", "/spec/suspend", "false")}
	for _, c := range []struct {
		name  string
		conc  v1alpha1.Concurrency
		field string
	}{
		{"unknown mode", v1alpha1.Concurrency{Mode: "Later"}, "spec.concurrency.mode"},
		{"queue without hold", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Release: release}, "spec.concurrency.hold"},
		{"queue without release", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: hold}, "spec.concurrency.release"},
		{"replace without cancel", v1alpha1.Concurrency{Mode: v1alpha1.Replace, Hold: hold, Release: release}, "spec.concurrency.cancel"},
		{"replace with maxInFlight", v1alpha1.Concurrency{Mode: v1alpha1.Replace, Hold: hold, Release: release, MaxInFlight: 2,
			Cancel: &v1alpha1.Cancel{Delete: true}}, "spec.concurrency.maxInFlight"},
		{"maxInFlight too high", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: hold, Release: release, MaxInFlight: 1001}, "spec.concurrency.maxInFlight"},
		{"cancel both ways", v1alpha1.Concurrency{Mode: v1alpha1.Replace, Hold: hold, Release: release,
			Cancel: &v1alpha1.Cancel{Delete: true, Patch: hold}}, "spec.concurrency.cancel"},
		{"unknown op", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("move", "/spec/a", "1")}, Release: release}, "spec.concurrency.hold[0].op"},
		{"add without value", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("add", "/spec/a", "")}, Release: release}, "spec.concurrency.hold[0].value"},
		{"remove with value", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: hold, Release: []v1alpha1.PatchOperation{op("remove", "/spec/a", "1")}}, "spec.concurrency.release[0].value"},
		{"not a pointer", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("add", "spec/suspend", "true")}, Release: release}, "spec.concurrency.hold[0].path"},
		{"the name", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("add", "/metadata/name", `"x"`)}, Release: release}, "spec.concurrency.hold[0].path"},
		{"the status", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: hold, Release: []v1alpha1.PatchOperation{op("remove", "/status/phase", "")}}, "spec.concurrency.release[0].path"},
		{"rrguard's annotation", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: hold, Release: []v1alpha1.PatchOperation{op("remove", annotationPath(AnnotationHeld), "")}}, "spec.concurrency.release[0].path"},
		{"all annotations", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("add", "/metadata/annotations", "{}")}, Release: release}, "spec.concurrency.hold[0].path"},
		{"not JSON", v1alpha1.Concurrency{Mode: v1alpha1.Queue, Hold: []v1alpha1.PatchOperation{op("add", "/spec/a", "{")}, Release: release}, "spec.concurrency.hold[0].value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := load(t, "../../config/samples/batch-job-queue.yaml")
			p.Spec.Concurrency = &c.conc
			_, err := Compile(p, "rrguard-system")
			var pe *Error
			if !asError(err, &pe) || pe.Reason != ReasonInvalid || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("compiled with %s: %v, want %s naming %s", c.name, err, ReasonInvalid, c.field)
			}
		})
	}
}

func asError(err error, pe **Error) bool {
	e, ok := err.(*Error)
	*pe = e
	return ok
}

// The hold, release and cancel patches as the API server will apply them.
func TestHoldAndReleasePatches(t *testing.T) {
	c := compiled(t, "../../config/samples/tekton-pipelinerun-replace.yaml")
	if c.Mode() != decision.Replace || c.Names() || !c.CanRelease() {
		t.Fatalf("mode %s, names %v, can release %v", c.Mode(), c.Names(), c.CanRelease())
	}
	at := time.Date(2026, 12, 5, 8, 0, 0, 123456789, time.UTC)
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	for _, x := range []struct {
		name string
		obj  map[string]any
		want string
	}{
		{"no metadata", map[string]any{"spec": map[string]any{}},
			`[{"op":"add","path":"/metadata","value":{"annotations":{"rrguard.kubernaut.ai/held":"true","rrguard.kubernaut.ai/key":"shop/main","rrguard.kubernaut.ai/policy":"tekton-pipelineruns-replace","rrguard.kubernaut.ai/queued":"2026-12-05T08:00:00.123456789Z"}}},{"op":"add","path":"/spec/status","value":"PipelineRunPending"}]`},
		{"no annotations", map[string]any{"metadata": map[string]any{"generateName": "run-"}},
			`[{"op":"add","path":"/metadata/annotations","value":{"rrguard.kubernaut.ai/held":"true","rrguard.kubernaut.ai/key":"shop/main","rrguard.kubernaut.ai/policy":"tekton-pipelineruns-replace","rrguard.kubernaut.ai/queued":"2026-12-05T08:00:00.123456789Z"}},{"op":"add","path":"/spec/status","value":"PipelineRunPending"}]`},
		{"a copy of a cancelled object", map[string]any{"metadata": map[string]any{"annotations": map[string]any{AnnotationCancelled: "x", AnnotationBehind: "y"}}},
			`[{"op":"add","path":"/metadata/annotations/rrguard.kubernaut.ai~1policy","value":"tekton-pipelineruns-replace"},{"op":"add","path":"/metadata/annotations/rrguard.kubernaut.ai~1key","value":"shop/main"},{"op":"add","path":"/metadata/annotations/rrguard.kubernaut.ai~1queued","value":"2026-12-05T08:00:00.123456789Z"},{"op":"add","path":"/metadata/annotations/rrguard.kubernaut.ai~1held","value":"true"},{"op":"remove","path":"/metadata/annotations/rrguard.kubernaut.ai~1queued-behind"},{"op":"remove","path":"/metadata/annotations/rrguard.kubernaut.ai~1cancelled"}]`},
	} {
		got := js(c.HoldPatch(x.obj, Admission{Key: "shop/main", Queued: at}))
		want := x.want
		if x.name == "a copy of a cancelled object" {
			want = strings.TrimSuffix(want, "]") + `,{"op":"add","path":"/spec/status","value":"PipelineRunPending"}]`
		}
		if got != want {
			t.Errorf("%s: hold\n got %s\nwant %s", x.name, got, want)
		}
	}
	if got, want := js(c.ReleasePatch()), `[{"op":"test","path":"/metadata/annotations/rrguard.kubernaut.ai~1held","value":"true"},{"op":"remove","path":"/metadata/annotations/rrguard.kubernaut.ai~1held"},{"op":"remove","path":"/spec/status"}]`; got != want {
		t.Errorf("release\n got %s\nwant %s", got, want)
	}
	ops, del := c.CancelPatch(false, at)
	if got, want := js(ops), `[{"op":"test","path":"/metadata/annotations/rrguard.kubernaut.ai~1held","value":null},{"op":"add","path":"/metadata/annotations/rrguard.kubernaut.ai~1cancelled","value":"2026-12-05T08:00:00Z"},{"op":"add","path":"/spec/status","value":"Cancelled"}]`; del || got != want {
		t.Errorf("cancel (delete %v)\n got %s\nwant %s", del, got, want)
	}
	if _, del := compiled(t, "../../config/samples/batch-job-replace.yaml").CancelPatch(true, at); !del {
		t.Error("the Job sample cancels by deletion")
	}
	held, err := c.UserHeld(context.Background(), map[string]any{"spec": map[string]any{"status": "PipelineRunPending"}})
	if err != nil || !held {
		t.Errorf("a run created pending: userHeld %v, %v", held, err)
	}
}

// A run rrguard held whose hold someone lifted (spec.status removed by hand) is no longer held:
// Lifted, and counted by the in-flight rule; one rrguard cancelled is not lifted.
func TestHoldLiftedByHand(t *testing.T) {
	c := compiled(t, "../../config/samples/tekton-pipelinerun-queue.yaml")
	held := map[string]string{AnnotationPolicy: c.Policy, AnnotationQueued: "2026-12-05T08:00:00Z", AnnotationHeld: heldValue}
	run := func(status string, extra map[string]string) map[string]any {
		as := map[string]any{}
		for k, v := range held {
			as[k] = v
		}
		for k, v := range extra {
			as[k] = v
		}
		spec := map[string]any{"pipelineRef": map[string]any{"name": "build"}}
		if status != "" {
			spec["status"] = status
		}
		return map[string]any{"metadata": map[string]any{"annotations": as}, "spec": spec}
	}
	for _, x := range []struct {
		name         string
		obj          map[string]any
		held, lifted bool
		inFlight     bool
	}{
		{"held", run("PipelineRunPending", nil), true, false, false},
		{"started by hand", run("", nil), false, true, true},
		{"cancelled by rrguard while held", run("Cancelled", map[string]string{AnnotationCancelled: "2026-12-05T08:01:00Z"}), true, false, true},
	} {
		f, err := c.Fact(context.Background(), x.obj, "run-1", "", time.Time{}, false)
		if err != nil {
			t.Fatalf("%s: %v", x.name, err)
		}
		if f.Held != x.held || f.Lifted != x.lifted || f.InFlight(time.Now()) != x.inFlight {
			t.Errorf("%s: held %v lifted %v in flight %v, want %v %v %v", x.name, f.Held, f.Lifted, f.InFlight(time.Now()), x.held, x.lifted, x.inFlight)
		}
	}
	if got, want := fmt.Sprint(c.LiftPatch()), fmt.Sprint(c.ReleasePatch()[:2]); got != want {
		t.Errorf("lift %s, want the release's test and removal %s", got, want)
	}
}
