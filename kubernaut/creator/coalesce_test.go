package creator_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/test/testenv"
)

// heldWrites is a client whose status writes wait at a gate until the test opens it, counting
// the refused creates, reads and writes it sends.
type heldWrites struct {
	client.Client
	refused, reads, writes atomic.Int32
	gate                   chan struct{}
}

func holdWrites(t *testing.T) *heldWrites {
	h := &heldWrites{gate: make(chan struct{})}
	h.Client, _ = faulty(t, interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			err := c.Create(ctx, obj, opts...)
			if apierrors.IsAlreadyExists(err) {
				h.refused.Add(1)
			}
			return err
		},
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			h.reads.Add(1)
			return c.Get(ctx, key, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			h.writes.Add(1)
			<-h.gate
			return c.Status().Patch(ctx, obj, patch, opts...)
		},
	})
	return h
}

// heldRR is an RR in flight, and a Creator whose status writes wait at h's gate.
func heldRR(t *testing.T) (ctx context.Context, ns, fp string, first creator.Result, h *heldWrites, cr *creator.Creator) {
	t.Helper()
	ctx, ns, fp = setup(t)
	first = mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	h = holdWrites(t)
	cr, err := creator.New(h, fast)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, ns, fp, first, h, cr
}

// waitFor polls cond for up to 30 s.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// 64 repeats of one RR from one process while the first write is held: they join the next
// write, so two writes record all 64, each signal returns only once its write succeeded, and
// the count is exact.
func TestRepeatsCoalesce(t *testing.T) {
	ctx, ns, fp, first, h, cr := heldRR(t)
	const n = 64
	var wg sync.WaitGroup
	var returned atomic.Int32
	results := make([]creator.Result, n)
	errs := make([]error, n)
	signal := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp))
			returned.Add(1)
		}()
	}
	// The first repeat's write begins (and is held) before the other 63 are sent: sent all at
	// once, a busy machine could queue all 64 before the writer took its first batch, and then
	// nothing joins a write under way.
	signal(0)
	waitFor(ctx, t, "the first refused create and its write", func() bool { return h.refused.Load() == 1 && h.writes.Load() == 1 })
	for i := 1; i < n; i++ {
		signal(i)
	}
	waitFor(ctx, t, "64 refused creates", func() bool { return h.refused.Load() == n })
	// The queue fills as each refusal returns; give the last ones time to join it.
	time.Sleep(500 * time.Millisecond)
	if r := returned.Load(); r != 0 || count(ctx, t, ns, first.Name) != 1 {
		t.Fatalf("%d signals returned before any write succeeded (count %d)", r, count(ctx, t, ns, first.Name))
	}
	close(h.gate)
	wg.Wait()
	// Each signal is 1/size of its batch, so the shares add up to the number of batches: two,
	// the first (the first signal alone) and everyone else.
	batches := 0.0
	for i := range n {
		if errs[i] != nil || results[i].New || results[i].Ambiguous || results[i].Name != first.Name || results[i].Batch == 0 {
			t.Fatalf("signal %d: %v %+v", i, errs[i], results[i])
		}
		batches += 1 / float64(results[i].Batch)
	}
	if got := count(ctx, t, ns, first.Name); got != 1+n {
		t.Fatalf("occurrenceCount %d, want %d", got, 1+n)
	}
	if h.writes.Load() != 2 || h.reads.Load() != 2 || math.Abs(batches-2) > 1e-9 {
		t.Fatalf("%d writes and %d reads for %d repeats in %.2f batches; want 2 writes and 2 reads, 2 batches",
			h.writes.Load(), h.reads.Load(), n, batches)
	}
}

// A caller that leaves while its repeat still waits for a write withdraws it: the write that
// follows does not count it, and the caller is told so (not Ambiguous).
func TestCancelledRepeatIsWithdrawn(t *testing.T) {
	ctx, ns, fp, first, h, cr := heldRR(t)
	held := make(chan error, 1)
	go func() {
		_, err := cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp))
		held <- err
	}()
	waitFor(ctx, t, "the first write", func() bool { return h.writes.Load() == 1 })
	leaving, cancel := context.WithCancel(ctx)
	left := make(chan struct {
		res creator.Result
		err error
	}, 1)
	go func() {
		res, err := cr.CreateOrRecord(leaving, testenv.NewRR(ns, fp))
		left <- struct {
			res creator.Result
			err error
		}{res, err}
	}()
	waitFor(ctx, t, "the second refusal", func() bool { return h.refused.Load() == 2 })
	time.Sleep(100 * time.Millisecond)
	cancel()
	got := <-left
	if !errors.Is(got.err, context.Canceled) || got.res.Ambiguous {
		t.Fatalf("cancelled while queued: %v %+v, want context.Canceled, not ambiguous", got.err, got.res)
	}
	close(h.gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if n := count(ctx, t, ns, first.Name); n != 2 || h.writes.Load() != 1 {
		t.Fatalf("occurrenceCount %d after %d writes; want 2 after 1 (the withdrawn repeat not counted)", n, h.writes.Load())
	}
}

// Four processes (four Creators) record 200 repeats of one RR at once. Their first writes are
// held until all four have read the RR, so at least three of them conflict: they retry within
// the budget, and the count ends exact.
func TestProcessesContend(t *testing.T) {
	ctx, ns, fp := setup(t)
	first := mustLand(ctx, t, env.Client, testenv.NewRR(ns, fp))
	var conflicts, firstWrites atomic.Int32
	const processes, perProcess = 4, 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range processes {
		var wrote atomic.Bool
		c, _ := faulty(t, interceptor.Funcs{SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			if !wrote.Swap(true) {
				firstWrites.Add(1)
				// No t.Fatal here: this runs on a Creator's writer goroutine.
				_ = wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
					return firstWrites.Load() == processes, nil
				})
			}
			err := c.Status().Patch(ctx, obj, patch, opts...)
			if apierrors.IsConflict(err) {
				conflicts.Add(1)
			}
			return err
		}})
		cr, err := creator.New(c, creator.Options{MaxAttempts: 50, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		for range perProcess {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if res, err := cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp)); err != nil || res.New || res.Ambiguous {
					t.Errorf("%v %+v", err, res)
					failed.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if n := count(ctx, t, ns, first.Name); n != 1+processes*perProcess || failed.Load() != 0 {
		t.Fatalf("occurrenceCount %d, want %d; %d failed", n, 1+processes*perProcess, failed.Load())
	}
	if conflicts.Load() < processes-1 {
		t.Fatalf("%d conflicts; the held first writes should have made at least %d", conflicts.Load(), processes-1)
	}
}
