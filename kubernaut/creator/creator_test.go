package creator_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

// fast keeps retries quick; the budget, not the clock, is what these tests check.
var fast = creator.Options{MaxAttempts: 6, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}

func setup(t *testing.T) (context.Context, string, string) {
	t.Helper()
	ctx, ns := env.TestNamespace(t, "creator", 2*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	return ctx, ns, testenv.Fingerprint(ns + "/" + t.Name())
}

// faulty is a real client with faults injected by funcs; real is the same client without them,
// for the fault to act through (another writer, a deletion) while the creator is mid-call.
func faulty(t *testing.T, funcs interceptor.Funcs) (c client.Client, real client.WithWatch) {
	t.Helper()
	real, err := client.NewWithWatch(env.Config, client.Options{Scheme: cluster.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return interceptor.NewClient(real, funcs), real
}

func get(ctx context.Context, t *testing.T, ns, name string) *v1alpha1.RemediationRequest {
	t.Helper()
	var rr v1alpha1.RemediationRequest
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &rr); err != nil {
		t.Fatal(err)
	}
	return &rr
}

func count(ctx context.Context, t *testing.T, ns, name string) int32 {
	t.Helper()
	return creator.Signals(get(ctx, t, ns, name))
}

func complete(ctx context.Context, c client.Client, ns, name string) error {
	var rr v1alpha1.RemediationRequest
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &rr); err != nil {
		return err
	}
	rr.Status.OverallPhase = v1alpha1.PhaseCompleted
	return c.Status().Update(ctx, &rr)
}

// createOrRecord lands one signal through a Creator of its own, which has nothing to coalesce
// with: the tests of one signal's path.
func createOrRecord(ctx context.Context, c client.Client, rr *v1alpha1.RemediationRequest, o creator.Options) (creator.Result, error) {
	cr, err := creator.New(c, o)
	if err != nil {
		return creator.Result{}, err
	}
	return cr.CreateOrRecord(ctx, rr)
}

func mustLand(ctx context.Context, t *testing.T, c client.Client, rr *v1alpha1.RemediationRequest) creator.Result {
	t.Helper()
	res, err := createOrRecord(ctx, c, rr, fast)
	if err != nil {
		t.Fatalf("CreateOrRecord: %v (%+v)", err, res)
	}
	return res
}

func TestNewSignalThenRepeat(t *testing.T) {
	ctx, ns, fp := setup(t)
	tmpl := testenv.NewRR(ns, fp)
	want := tmpl.DeepCopy()
	res := mustLand(ctx, t, env.Client, tmpl)
	// One request: the new RR holds its signal without a status write.
	if !res.New || res.Name != rules.Name(fp, 1) || res.Attempts != 1 || res.Requests != 1 || res.Retries != 0 {
		t.Fatalf("new signal: %+v", res)
	}
	if rr := get(ctx, t, ns, res.Name); rr.Status.Deduplication != nil || creator.Signals(rr) != 1 {
		t.Fatalf("new RR: deduplication %+v, signals %d", rr.Status.Deduplication, creator.Signals(rr))
	}
	// The caller's object is a template: untouched, so reusing it sends a new signal, not the
	// first one's ID (which would be taken for "mine" and not counted).
	if tmpl.Name != want.Name || tmpl.GenerateName != want.GenerateName || len(tmpl.Annotations) != 0 {
		t.Fatalf("template modified: name %q generateName %q annotations %v", tmpl.Name, tmpl.GenerateName, tmpl.Annotations)
	}
	res = mustLand(ctx, t, env.Client, tmpl)
	if res.New || res.Name != rules.Name(fp, 1) {
		t.Fatalf("repeat: %+v", res)
	}
	rr := get(ctx, t, ns, res.Name)
	if d := rr.Status.Deduplication; d == nil || d.OccurrenceCount != 2 || d.FirstSeenAt == nil || !d.FirstSeenAt.Equal(&rr.CreationTimestamp) {
		t.Fatalf("after two signals: %+v, want occurrenceCount 2 first seen at creation %v", d, rr.CreationTimestamp)
	}
}

// A caller's own signal ID is kept: a retried signal (same ID) is recognised, not counted twice.
func TestCallerSignalIDKept(t *testing.T) {
	ctx, ns, fp := setup(t)
	tmpl := testenv.NewRR(ns, fp)
	tmpl.Annotations = map[string]string{creator.SignalIDAnnotation: "gateway-signal-42"}
	first := mustLand(ctx, t, env.Client, tmpl)
	again := mustLand(ctx, t, env.Client, tmpl)
	if !first.New || !again.New || again.Name != first.Name || count(ctx, t, ns, first.Name) != 1 {
		t.Fatalf("same signal twice: %+v then %+v, count %d", first, again, count(ctx, t, ns, first.Name))
	}
}

// The create was stored but its answer lost: the retry's 409 names the signal's own RR.
func TestLostCreateResponseIsRecognised(t *testing.T) {
	ctx, ns, fp := setup(t)
	var lost atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		err := c.Create(ctx, obj, opts...)
		if err == nil && lost.Add(1) == 1 {
			return &url.Error{Op: "Post", URL: "https://apiserver/apis/kubernaut.ai", Err: syscall.ECONNRESET}
		}
		return err
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if lost.Load() < 1 || !res.New || res.Attempts != 2 || res.Retries != 1 || count(ctx, t, ns, res.Name) != 1 {
		t.Fatalf("lost=%d %+v count %d", lost.Load(), res, count(ctx, t, ns, res.Name))
	}
}

// A 409 naming an RR that finished before the creator read it: the signal is a new remediation.
func TestAlreadyExistsNamingFinishedRRCreatesAgain(t *testing.T) {
	ctx, ns, fp := setup(t)
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	var hit atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		err := c.Create(ctx, obj, opts...)
		if apierrors.IsAlreadyExists(err) && hit.Add(1) == 1 {
			if err := complete(ctx, c, ns, first.Name); err != nil {
				return err
			}
		}
		return err
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if hit.Load() != 1 || !res.New || res.Name != rules.Name(fp, 2) || res.Attempts != 2 {
		t.Fatalf("hit=%d %+v", hit.Load(), res)
	}
	if n := count(ctx, t, ns, first.Name); n != 1 {
		t.Fatalf("the finished RR's count moved to %d", n)
	}
}

// A 409 naming an RR deleted before the creator read it: create again.
func TestAlreadyExistsNamingGoneRRCreatesAgain(t *testing.T) {
	ctx, ns, fp := setup(t)
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	firstUID := get(ctx, t, ns, first.Name).UID
	var hit atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		err := c.Create(ctx, obj, opts...)
		if apierrors.IsAlreadyExists(err) && hit.Add(1) == 1 {
			if err := c.Delete(ctx, get(ctx, t, ns, first.Name)); err != nil {
				return err
			}
			// rrguard holds a deleted RR until its mark covers it: wait until it is gone.
			if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
				return apierrors.IsNotFound(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: first.Name}, &v1alpha1.RemediationRequest{})), nil
			}); err != nil {
				return err
			}
		}
		return err
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if hit.Load() != 1 || !res.New || res.Attempts != 2 || get(ctx, t, ns, res.Name).UID == firstUID || count(ctx, t, ns, res.Name) != 1 {
		t.Fatalf("hit=%d %+v", hit.Load(), res)
	}
}

// Other writers win the status write three times: each conflict re-reads, backs off and spends
// a try; the count ends exact.
func TestConflictsRetriedAndCounted(t *testing.T) {
	ctx, ns, fp := setup(t)
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	var conflicts atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
		if conflicts.Load() < 3 {
			// Another creator records a repeat first.
			if _, err := createOrRecord(ctx, c, testenv.NewRR(ns, fp), fast); err != nil {
				return err
			}
		}
		err := c.Status().Patch(ctx, obj, patch, opts...)
		if apierrors.IsConflict(err) {
			conflicts.Add(1)
		}
		return err
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if conflicts.Load() != 3 || res.New || res.Retries != 3 || res.Requests != 1 || res.Batch != 1 || res.BatchRequests != 1+4+3 {
		t.Fatalf("conflicts=%d %+v (want 1 create; in its batch of 1: 1 read, 4 writes, 3 re-reads)", conflicts.Load(), res)
	}
	if n := count(ctx, t, ns, first.Name); n != 1+3+1 {
		t.Fatalf("occurrenceCount %d, want 5", n)
	}
}

// Conflicts that never end stop after 10 x MaxAttempts lost writes (a loss spends no try, see
// creator.spendOnConflict): a hot RR costs a bounded number of requests per signal.
func TestConflictsBounded(t *testing.T) {
	ctx, ns, fp := setup(t)
	mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	var writes atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{SubResourcePatch: func(context.Context, client.Client, string, client.Object, client.Patch, ...client.SubResourcePatchOption) error {
		writes.Add(1)
		return apierrors.NewConflict(schema.GroupResource{Group: "kubernaut.ai", Resource: "remediationrequests"}, "x", errors.New("the object has been modified"))
	}})
	res, err := createOrRecord(ctx, c, testenv.NewRR(ns, fp), fast)
	if !errors.Is(err, creator.ErrGaveUp) || int(writes.Load()) != 10*fast.MaxAttempts || res.Retries != 10*fast.MaxAttempts {
		t.Fatalf("err=%v writes=%d %+v", err, writes.Load(), res)
	}
}

// The repeat's RR finishes between the read and the write: the write conflicts, the re-read
// shows it finished, and the signal starts the next RR instead of joining a finished one.
func TestRepeatOnRRThatFinishesCreatesAgain(t *testing.T) {
	ctx, ns, fp := setup(t)
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	var hit atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
		if obj.GetName() == first.Name && hit.Add(1) == 1 {
			if err := complete(ctx, c, ns, first.Name); err != nil {
				return err
			}
		}
		return c.Status().Patch(ctx, obj, patch, opts...)
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if hit.Load() < 1 || !res.New || res.Name != rules.Name(fp, 2) || res.Attempts != 2 {
		t.Fatalf("hit=%d %+v", hit.Load(), res)
	}
	if n := count(ctx, t, ns, first.Name); n != 1 {
		t.Fatalf("the finished RR counted %d", n)
	}
}

// A status write applied whose answer was lost: retried, over-counted by one, reported.
func TestLostStatusWriteIsAmbiguous(t *testing.T) {
	ctx, ns, fp := setup(t)
	var lost atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
		err := c.Status().Patch(ctx, obj, patch, opts...)
		if err == nil && lost.Add(1) == 1 {
			return io.ErrUnexpectedEOF
		}
		return err
	}})
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if lost.Load() < 1 || !res.Ambiguous || res.New || count(ctx, t, ns, first.Name) != 3 {
		t.Fatalf("lost=%d %+v count %d (want 3: one signal counted twice)", lost.Load(), res, count(ctx, t, ns, first.Name))
	}
}

func TestTransientRetriedThenGivesUp(t *testing.T) {
	ctx, ns, fp := setup(t)
	var fails atomic.Int32
	limit := int32(2)
	c, _ := faulty(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
		if fails.Add(1) <= limit {
			return apierrors.NewInternalError(errors.New(`failed calling webhook "name.rrguard.kubernaut.ai": connection refused`))
		}
		return c.Create(ctx, obj, opts...)
	}})
	res := mustLand(ctx, t, c, testenv.NewRR(ns, fp))
	if !res.New || res.Attempts != 3 || res.Retries != 2 {
		t.Fatalf("after two webhook failures: %+v", res)
	}
	limit = 1 << 30
	res, err := createOrRecord(ctx, c, testenv.NewRR(ns, testenv.Fingerprint(ns+"/never")), fast)
	if !errors.Is(err, creator.ErrGaveUp) || res.Attempts != fast.MaxAttempts {
		t.Fatalf("always failing: %v %+v", err, res)
	}
}

// Errors that retrying cannot fix come back at once: the caller's mistakes, and errors nobody
// knows to be transient.
func TestNotRetried(t *testing.T) {
	ctx, ns, fp := setup(t)
	boom := errors.New("boom: a client-side bug")
	noName := apierrors.NewAlreadyExists(schema.GroupResource{Group: "kubernaut.ai", Resource: "remediationrequests"}, "")
	for _, tc := range []struct {
		name   string
		inject error
		rr     *v1alpha1.RemediationRequest
		want   func(error) bool
	}{
		{"bad fingerprint: 422 from rrguard", nil, testenv.NewRR(ns, "ABC"), apierrors.IsInvalid},
		{"unknown error", boom, testenv.NewRR(ns, fp), func(err error) bool { return errors.Is(err, boom) }},
		{"409 without a name", noName, testenv.NewRR(ns, fp), func(err error) bool { return errors.Is(err, creator.ErrNoDetails) }},
		{"403", apierrors.NewForbidden(schema.GroupResource{Resource: "remediationrequests"}, "", errors.New("rbac")), testenv.NewRR(ns, fp), apierrors.IsForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			c, _ := faulty(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				calls.Add(1)
				if tc.inject != nil {
					return tc.inject
				}
				return c.Create(ctx, obj, opts...)
			}})
			res, err := createOrRecord(ctx, c, tc.rr, fast)
			if !tc.want(err) || calls.Load() != 1 || res.Retries != 0 {
				t.Fatalf("err=%v calls=%d %+v", err, calls.Load(), res)
			}
		})
	}
}

func TestOptionsValidated(t *testing.T) {
	var calls atomic.Int32
	c, _ := faulty(t, interceptor.Funcs{Create: func(context.Context, client.WithWatch, client.Object, ...client.CreateOption) error {
		calls.Add(1)
		return nil
	}})
	for _, o := range []creator.Options{
		{MaxAttempts: -1}, {InitialBackoff: -time.Second}, {MaxBackoff: -1},
		{InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := createOrRecord(context.Background(), c, testenv.NewRR("x", testenv.Fingerprint("x")), o); !errors.Is(err, creator.ErrInvalidOptions) {
			t.Errorf("%+v: %v", o, err)
		}
	}
	if calls.Load() != 0 {
		t.Fatalf("%d requests sent with invalid options", calls.Load())
	}
}

func TestTransient(t *testing.T) {
	gr := schema.GroupResource{Group: "kubernaut.ai", Resource: "remediationrequests"}
	yes := []error{
		apierrors.NewTooManyRequests("slow down", 1),
		apierrors.NewInternalError(errors.New(`failed calling webhook "name.rrguard.kubernaut.ai"`)),
		apierrors.NewServiceUnavailable("rrguard could not read"),
		apierrors.NewServerTimeout(gr, "create", 1),
		apierrors.NewTimeoutError("timeout", 1),
		apierrors.NewGenericServerResponse(502, "POST", gr, "", "bad gateway", 0, true),
		&url.Error{Op: "Post", URL: "https://x", Err: syscall.ECONNREFUSED},
		&url.Error{Op: "Post", URL: "https://x", Err: syscall.ECONNRESET},
		io.EOF, io.ErrUnexpectedEOF,
		fmt.Errorf("http2: client connection lost"),
	}
	no := []error{
		nil, context.Canceled, context.DeadlineExceeded,
		apierrors.NewBadRequest("x"), apierrors.NewInvalid(schema.GroupKind{Kind: "RemediationRequest"}, "x", nil),
		apierrors.NewForbidden(gr, "x", errors.New("no")), apierrors.NewNotFound(gr, "x"),
		apierrors.NewAlreadyExists(gr, "x"), apierrors.NewConflict(gr, "x", errors.New("c")),
		errors.New("something nobody classified"),
		&url.Error{Op: "Post", URL: "https://x", Err: errors.New("x509: certificate signed by unknown authority")},
	}
	for _, err := range yes {
		if !creator.Transient(err) {
			t.Errorf("not transient, want transient: %v", err)
		}
	}
	for _, err := range no {
		if creator.Transient(err) {
			t.Errorf("transient, want not: %v", err)
		}
	}
}
