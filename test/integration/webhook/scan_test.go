package webhook

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/test/testenv"
)

// The consistent read of a CRD without the selectable field scans the namespace in pages of 500:
// with 1,100 RRs, it finds a fingerprint's RRs on every page, as the field selector's List does.
func TestScanListsEveryPage(t *testing.T) {
	serving(t)
	ctx, ns := env.TestNamespace(t, "scan", 3*time.Minute)
	const n = 1100
	fps := make([]string, n)
	names := make([]string, n)
	var mu sync.Mutex
	var firstErr error
	testenv.Parallel(n, 16, func(i int) {
		fps[i] = testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i))
		rr := testenv.NewRR(ns, fps[i])
		err := env.Client.Create(ctx, rr)
		mu.Lock()
		defer mu.Unlock()
		names[i] = rr.Name
		if err != nil && firstErr == nil {
			firstErr = err
		}
	})
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	// The List returns names in order: the first, the middle and the last name are on pages 1, 2
	// and 3.
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	scan, err := testenv.RRReader(env.Config, false)
	if err != nil {
		t.Fatal(err)
	}
	bySelector, err := testenv.RRReader(env.Config, true)
	if err != nil {
		t.Fatal(err)
	}
	if scan.ReadMode() != rrguardv1.ReadNamespaceScan || bySelector.ReadMode() != rrguardv1.ReadFieldSelector {
		t.Fatalf("read modes %s and %s", scan.ReadMode(), bySelector.ReadMode())
	}
	for _, name := range []string{sorted[0], sorted[n/2], sorted[n-1]} {
		fp := fps[slices.Index(names, name)]
		got, err := scan.ReadKey(context.Background(), ns, fp, fp)
		if err != nil || len(got) != 1 || got[0].Name != name {
			t.Fatalf("scan for %s: %d RRs, %v", name, len(got), err)
		}
		want, err := bySelector.ReadKey(context.Background(), ns, fp, fp)
		if err != nil || len(want) != 1 || want[0].Name != got[0].Name {
			t.Fatalf("selector for %s: %v, %v", name, want, err)
		}
	}
	none := testenv.Fingerprint("none")
	if got, err := scan.ReadKey(ctx, ns, none, none); err != nil || len(got) != 0 {
		t.Fatalf("scan for an absent fingerprint: %d RRs, %v", len(got), err)
	}
}
