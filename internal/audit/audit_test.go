package audit_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/audit"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

func namespaces(ctx context.Context, t *testing.T) (judged, off string) {
	t.Helper()
	_, judged = env.TestNamespace(t, "audit", time.Minute)
	off, err := env.UnjudgedNamespace(ctx, "audit-off", judged)
	if err != nil {
		t.Fatal(err)
	}
	return judged, off
}

// named creates an RR under a name of the caller's (only rrguard's absence lets it stand).
func named(ctx context.Context, t *testing.T, ns, fp, name string) *v1alpha1.RemediationRequest {
	t.Helper()
	rr := testenv.NewRR(ns, fp)
	rr.GenerateName, rr.Name = "", name
	if err := env.Client.Create(ctx, rr); err != nil {
		t.Fatal(err)
	}
	return rr
}

func TestAudit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	judged, off := namespaces(ctx, t)
	store := marks.Store{Namespace: testenv.MarksNamespace, Reader: env.Client, Writer: env.Client}

	// Through rrguard: two fingerprints, one RR each, named and held by rrguard.
	for _, s := range []string{"a", "b"} {
		if err := env.Client.Create(ctx, testenv.NewRR(judged, testenv.Fingerprint(judged+s))); err != nil {
			t.Fatal(err)
		}
	}
	// Around it: fingerprint a with two RRs in flight, one not named by the scheme; fingerprint
	// b marked at 3 with RRs numbered 2 (covered, completed) and 5 (not, in flight).
	a, b := testenv.Fingerprint(off+"a"), testenv.Fingerprint(off+"b")
	named(ctx, t, off, a, rules.Name(a, 1))
	named(ctx, t, off, a, "legacy-1")
	if err := store.Raise(ctx, off, marks.ShardName(b), map[string]int64{b: 3}); err != nil {
		t.Fatal(err)
	}
	done := named(ctx, t, off, b, rules.Name(b, 2))
	done.Status.OverallPhase = v1alpha1.PhaseCompleted
	if err := env.Client.Status().Update(ctx, done); err != nil {
		t.Fatal(err)
	}
	named(ctx, t, off, b, rules.Name(b, 5))
	// An RR the old release held for life, seen an hour later: held past the hold, and nothing
	// else (it is covered until its finalizer goes).
	c := testenv.Fingerprint(off + "c")
	heldRR := testenv.NewRR(off, c)
	heldRR.GenerateName, heldRR.Name, heldRR.Finalizers = "", rules.Name(c, 1), []string{marks.Finalizer}
	if err := env.Client.Create(ctx, heldRR); err != nil {
		t.Fatal(err)
	}
	inAnHour := func() time.Time { return time.Now().Add(time.Hour) }

	clean, err := audit.Run(ctx, env.Client, rrAudit(audit.Options{Namespaces: []string{judged}, Marks: store, PageSize: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if clean.Objects != 2 || clean.Keys != 2 || len(clean.Findings) != 0 {
		t.Fatalf("through rrguard: %+v, want 2 RRs and no findings", clean)
	}

	// Pages of one: the audit reads every page.
	r, err := audit.Run(ctx, env.Client, rrAudit(audit.Options{Namespaces: []string{off}, Marks: store, PageSize: 1, Now: inAnHour}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[audit.Kind][]string{}
	for _, f := range r.Findings {
		got[f.Kind] = append(got[f.Kind], f.Names...)
	}
	want := map[audit.Kind][]string{
		audit.DuplicateInFlight: {"legacy-1", rules.Name(a, 1)},
		audit.ForeignName:       {"legacy-1"},
		audit.NotCoveredByMark:  {rules.Name(a, 1), rules.Name(b, 5)},
		audit.HeldPastTheHold:   {rules.Name(c, 1)},
	}
	slices.Sort(got[audit.NotCoveredByMark])
	slices.Sort(want[audit.NotCoveredByMark])
	if r.Objects != 5 || r.Keys != 3 || len(got) != len(want) {
		t.Fatalf("around rrguard: %d RRs, %d fingerprints, findings %+v", r.Objects, r.Keys, r.Findings)
	}
	for k, names := range want {
		if !slices.Equal(got[k], names) {
			t.Errorf("%s: %v, want %v (all findings %+v)", k, got[k], names, r.Findings)
		}
	}

	// A mark entry rrguard cannot read is a finding of its own.
	var cm corev1.ConfigMap
	if err := env.Client.Get(ctx, clientKey(marks.ShardName(b)), &cm); err != nil {
		t.Fatal(err)
	}
	cm.Data[marks.EntryKey(off, testenv.Fingerprint("corrupt"))] = "three"
	if err := env.Client.Update(ctx, &cm); err != nil {
		t.Fatal(err)
	}
	r, err = audit.Run(ctx, env.Client, rrAudit(audit.Options{Namespaces: []string{judged}, Marks: store}))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Findings) != 1 || r.Findings[0].Kind != audit.CorruptMark {
		t.Fatalf("with a corrupt mark entry: %+v", r.Findings)
	}
}

// rrAudit is an audit of RRs under the built-in policy.
func rrAudit(o audit.Options) audit.Options {
	p, err := policy.RemediationRequests()
	if err != nil {
		panic(err)
	}
	o.Policy, o.Kind = p, v1alpha1.GroupVersion.WithKind("RemediationRequest")
	return o
}

func clientKey(shard string) client.ObjectKey {
	return client.ObjectKey{Namespace: testenv.MarksNamespace, Name: shard}
}
