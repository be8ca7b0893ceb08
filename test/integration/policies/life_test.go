package policies

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

// lifePolicy is the Tekton sample as a cluster object of its own name, judging only ns.
func lifePolicy(t *testing.T, name, ns string) *rrguardv1.UniquenessPolicy {
	t.Helper()
	p := targets[0].policy(t)
	p.Name = name
	p.Spec.Target.Namespaces = []string{ns}
	return p
}

func policyStatus(ctx context.Context, t *testing.T, name string) rrguardv1.UniquenessPolicyStatus {
	t.Helper()
	var p rrguardv1.UniquenessPolicy
	if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return p.Status
}

// waitCondition waits up to within for condition ctype of policy name to be status with reason.
func waitCondition(ctx context.Context, t *testing.T, name, ctype string, status metav1.ConditionStatus, reason string, within time.Duration) rrguardv1.UniquenessPolicyStatus {
	t.Helper()
	var st rrguardv1.UniquenessPolicyStatus
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, within, true, func(ctx context.Context) (bool, error) {
		// The poll's own deadline cuts its last read: keep the status read before, for the message.
		var p rrguardv1.UniquenessPolicy
		if err := env.Client.Get(ctx, client.ObjectKey{Name: name}, &p); err != nil {
			return false, nil
		}
		st = p.Status
		c := meta.FindStatusCondition(st.Conditions, ctype)
		return c != nil && c.Status == status && (reason == "" || c.Reason == reason), nil
	}); err != nil {
		t.Fatalf("policy %s: %s not %s %s within %s: %+v", name, ctype, status, reason, within, st.Conditions)
	}
	return st
}

// enforceWithin is how soon a policy applied is enforced (issue 21's promise); creators is how many
// create through a change of the policy.
const (
	enforceWithin = 10 * time.Second
	creators      = 8
	changes       = 5
)

// A policy applied to the cluster is enforced within 10 seconds (rrguard writes the webhooks for
// it); changed while creates arrive, it keeps one in flight; deleted, its target is no longer
// judged and its webhooks go.
func TestPolicyLife(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "life", 3*time.Minute)
	serving(ctx, t, func(o *serve.Options) { o.Policies = nil })
	tg := targets[0]
	p := lifePolicy(t, "life-pipelineruns", ns)
	applied := time.Now()
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	st := waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "Enforced", enforceWithin)
	if !meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionCompiled) || !meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionWatching) ||
		st.ConsistentRead != rrguardv1.ReadLabelSelector || st.ObservedGeneration != 1 {
		t.Fatalf("status %+v", st)
	}
	var judged *unstructured.Unstructured
	left := enforceWithin - time.Since(applied)
	if left <= 0 {
		t.Fatalf("the policy reported Enforced only %v after it was applied, past the %v", time.Since(applied), enforceWithin)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, left, true, func(ctx context.Context) (bool, error) {
		u := tg.object(ns)
		if err := env.Client.Create(ctx, u); err != nil {
			return false, nil
		}
		if u.GetName() != tg.name(1) {
			_ = env.Client.Delete(ctx, u) // not judged yet: the API server has not picked up the webhooks
			return false, nil
		}
		judged = u
		return true, nil
	}); err != nil {
		t.Fatalf("a create was not judged within 10 s of applying the policy: %v", err)
	}
	t.Logf("judged %s after %s", judged.GetName(), time.Since(applied).Round(time.Millisecond))

	// Changed five times (messages and the in-flight expression) while 8 creators keep creating:
	// each generation is made before the last is broken, so every create meanwhile is answered
	// 409 naming -1, by one generation or the next, never 503, and nothing else is stored.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var refused, unavailable, other atomic.Int64
	var otherErr atomic.Value
	for range creators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				err := env.Client.Create(ctx, tg.object(ns))
				switch {
				case apierrors.IsAlreadyExists(err) && testenv.DetailsName(err) == tg.name(1):
					refused.Add(1)
				case apierrors.IsServiceUnavailable(err), apierrors.IsInternalError(err) && strings.Contains(err.Error(), "retry"):
					unavailable.Add(1)
				default:
					other.Add(1)
					otherErr.Store(err)
				}
			}
		}()
	}
	// The change lands while every creator is at work: each has been answered twice, and is
	// answered twice more once the new generation is enforced.
	answered := func() int64 { return refused.Load() + unavailable.Load() + other.Load() }
	awaitAnswers := func(n int64) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			return answered() >= n, nil
		}); err != nil {
			t.Fatalf("the creators were answered %d times, want %d: %v", answered(), n, err)
		}
	}
	awaitAnswers(2 * creators)
	inFlight := p.Spec.InFlight
	lastMessage := ""
	for change := 1; change <= changes; change++ {
		if err := retryConflict(func() error {
			var cur rrguardv1.UniquenessPolicy
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
				return err
			}
			if change%2 == 1 {
				lastMessage = fmt.Sprintf("a PipelineRun of this branch is running (change %d)", change)
				cur.Spec.Message = lastMessage
			} else {
				// The same rule, written anew: a new program and projection, one verdict.
				cur.Spec.InFlight = fmt.Sprintf("(%s) || %d < 0", inFlight, change)
			}
			return env.Client.Update(ctx, &cur)
		}); err != nil {
			t.Fatal(err)
		}
		generation := int64(1 + change)
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, enforceWithin, true, func(ctx context.Context) (bool, error) {
			st := policyStatus(ctx, t, p.Name)
			return st.ObservedGeneration == generation && meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced), nil
		}); err != nil {
			t.Fatalf("generation %d not enforced: %v", generation, err)
		}
		awaitAnswers(answered() + 2*creators)
	}
	stop.Store(true)
	wg.Wait()
	if other.Load() > 0 || unavailable.Load() > 0 || refused.Load() == 0 {
		t.Fatalf("creates through the change: %d refused naming -1, %d unavailable, %d other (last: %v)", refused.Load(), unavailable.Load(), other.Load(), otherErr.Load())
	}
	err := env.Client.Create(ctx, tg.object(ns))
	if !apierrors.IsAlreadyExists(err) || !strings.Contains(err.Error(), lastMessage) {
		t.Fatalf("after the change, the 409 carries the new message: %v", err)
	}
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(tg.gvk.GroupVersion().WithKind("PipelineRunList"))
	if err := env.Client.List(ctx, list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
		t.Fatalf("stored %d PipelineRuns through the change (%v), want only %s", len(list.Items), err, tg.name(1))
	}
	t.Logf("through %d changes: %d refused naming -1, %d unavailable", changes, refused.Load(), unavailable.Load())

	// Deleted: within 10 s a create keeps the name it was sent with, and the webhooks are gone.
	if err := env.Client.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		u := tg.object(ns)
		u.SetGenerateName("")
		u.SetName("after-delete")
		err := env.Client.Create(ctx, u, client.DryRunAll)
		return err == nil && u.GetName() == "after-delete", nil
	}); err != nil {
		t.Fatalf("creates still judged 10 s after the policy was deleted: %v", err)
	}
	var mut admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &mut); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(mut.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return strings.HasPrefix(w.Name, p.Name+".") }) {
		t.Fatalf("the deleted policy's webhook is still configured: %+v", mut.Webhooks)
	}
	t.Logf("left alone %s after the delete", time.Since(deleted).Round(time.Millisecond))
}

// idleWindow is how long the idle test watches for writes; settleWithin bounds how long replicas
// may take to agree once every policy is enforced.
const (
	idleWindow   = time.Minute
	settleWithin = time.Minute
	settledAfter = 5 * time.Second
)

// Three replicas enforcing three policies from the cluster, once their statuses and the webhook
// configurations agree, write nothing while nothing changes: not the policies' status (the
// replicas do not overwrite each other's), not the webhook configurations (rrguard writes them as
// the API server stores them, defaults included), not a mark or a finalizer. Counted at each
// replica's client for a minute.
func TestIdlePoliciesWriteNothing(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "idle", 4*time.Minute)
	counts := make([]*testenv.Requests, 3)
	for i := range counts {
		counts[i] = &testenv.Requests{}
		adjust := []func(*serve.Options){func(o *serve.Options) { o.Policies = nil }}
		if i > 0 {
			adjust = append(adjust, testenv.Aside)
		}
		_, stop, err := env.ServeReplica(ctx, testenv.Counting(env.Config, counts[i]), adjust...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = stop() })
	}
	for _, tg := range targets {
		p := tg.policy(t)
		p.Name = "idle-" + p.Name
		p.Spec.Target.Namespaces = []string{ns}
		if err := env.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
		waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "Enforced", enforceWithin)
	}
	writes := func() (n int64) {
		for _, c := range counts {
			n += c.Writes.Load()
		}
		return n
	}
	// Settled: no write by any replica for settledAfter.
	last, lastChange := writes(), time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, settleWithin, true, func(context.Context) (bool, error) {
		if w := writes(); w != last {
			last, lastChange = w, time.Now()
		}
		return time.Since(lastChange) >= settledAfter, nil
	}); err != nil {
		t.Fatalf("the replicas kept writing for %v after every policy was enforced: %v", settleWithin, err)
	}
	before := writes()
	var seen []string
	for _, c := range counts {
		seen = append(seen, c.WritesTo(watchedForWrites...)...)
	}
	time.Sleep(idleWindow) // a window to count in, not a wait for anything
	if n := writes() - before; n != 0 {
		var now []string
		for _, c := range counts {
			now = append(now, c.WritesTo(watchedForWrites...)...)
		}
		t.Fatalf("%d writes in an idle minute with 3 replicas and 3 policies; to webhook configurations and policies, before %d, now %d: %v",
			n, len(seen), len(now), now[min(len(seen), len(now)):])
	}
	byKind := map[string]int{}
	for _, w := range seen {
		method, path, _ := strings.Cut(w, " ")
		parts := strings.Split(path, "/")
		byKind[method+" "+strings.Join(parts[max(0, len(parts)-2):], "/")]++
	}
	t.Logf("setting up 3 policies on 3 replicas took %d writes to webhook configurations and policies (%v); an idle minute, none", len(seen), byKind)
}

// watchedForWrites is what the idle test counts writes to: rrguard's admission configurations
// (webhooks, and the name checks it generates) and the policies.
var watchedForWrites = []string{"mutatingwebhookconfigurations", "validatingwebhookconfigurations",
	"validatingadmissionpolicies", "validatingadmissionpolicybindings", "uniquenesspolicies"}

// A policy rrguard cannot enforce says why in its status, and is not enforced: a bad expression,
// one over the cost budget, a forbidden target, a target the API server does not serve, a second
// policy for one resource, the RRs (the built-in policy's).
func TestPoliciesRefused(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "refused", 3*time.Minute)
	serving(ctx, t, func(o *serve.Options) { o.Policies = nil })
	first := lifePolicy(t, "refused-first", ns)
	if err := env.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), first) })
	waitCondition(ctx, t, first.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "", 10*time.Second)
	for _, c := range []struct {
		name, reason string
		edit         func(*rrguardv1.UniquenessPolicySpec)
	}{
		{"refused-syntax", policy.ReasonCompileError, func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target.Resource = "workflows"
			s.Target.Group = "argoproj.io"
			s.Target.Versions = []string{"v1alpha1"}
			s.Key.Expression = "object.metadata.labels["
		}},
		{"refused-budget", policy.ReasonOverBudget, func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "argoproj.io", Versions: []string{"v1alpha1"}, Resource: "workflows"}
			s.InFlight = "object.status.conditions.all(a, object.status.conditions.all(b, a.type == b.type))"
		}},
		{"refused-leases", policy.ReasonForbiddenTarget, func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "coordination.k8s.io", Versions: []string{"v1"}, Resource: "leases"}
		}},
		{"refused-unknown", "TargetNotWatchable", func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "example.com", Versions: []string{"v1"}, Resource: "gadgets"}
		}},
		{"refused-second", serve.ReasonConflictingPolicy, func(*rrguardv1.UniquenessPolicySpec) {}},
		{"refused-rrs", serve.ReasonConflictingPolicy, func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "kubernaut.ai", Versions: []string{"v1alpha1"}, Resource: "remediationrequests"}
			s.Key = rrguardv1.Key{Expression: "object.spec.signalFingerprint", Encoding: rrguardv1.KeyHex, NamePrefix: "x-"}
		}},
		// The built-in policy's name: refused, and neither it nor its deletion touches the built-in.
		{serve.RRPolicy, serve.ReasonConflictingPolicy, func(s *rrguardv1.UniquenessPolicySpec) {
			s.Target = rrguardv1.Target{Group: "argoproj.io", Versions: []string{"v1alpha1"}, Resource: "workflows"}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := lifePolicy(t, c.name, ns)
			c.edit(&p.Spec)
			if err := env.Client.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
			st := waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionFalse, c.reason, 10*time.Second)
			if msg := meta.FindStatusCondition(st.Conditions, rrguardv1.ConditionEnforced).Message; msg == "" {
				t.Fatalf("no reason given: %+v", st.Conditions)
			}
		})
	}
	// The built-in RR policy still judges RRs, after a cluster policy of its name came and went.
	rr := testenv.NewRR(ns, testenv.Fingerprint(ns))
	if err := env.Client.Create(ctx, rr); err != nil || !strings.HasPrefix(rr.Name, "rr-") {
		t.Fatalf("an RR after a cluster policy named %s was refused and deleted: %q, %v", serve.RRPolicy, rr.Name, err)
	}
	// The first policy is still the one enforced for PipelineRuns, untouched by the second.
	u := targets[0].object(ns)
	if err := env.Client.Create(ctx, u); err != nil || u.GetName() != rules.NameFor("pr-", rules.HashKey("shop/main"), 1) {
		t.Fatalf("create under the first policy: %q, %v", u.GetName(), err)
	}
	err := env.Client.Create(ctx, targets[0].object(ns))
	var st apierrors.APIStatus
	if !apierrors.IsAlreadyExists(err) || !errors.As(err, &st) || st.Status().Details.Name != u.GetName() {
		t.Fatalf("a second create under the first policy: %v", err)
	}
}

// A policy whose target rrguard may not read (no RBAC for it) is never enforced and says why: the
// API server's refusal of its watch, in the status.
func TestPolicyOnAForbiddenTarget(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "forbidden", 2*time.Minute)
	// rrguard as a user that may do everything it needs but read Jobs.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "rrguard-test-no-jobs"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"", "kubernaut.ai", "rrguard.kubernaut.ai", "admissionregistration.k8s.io", "tekton.dev", "argoproj.io", "coordination.k8s.io"},
			Resources: []string{"*"}, Verbs: []string{"*"}},
		{NonResourceURLs: []string{"*"}, Verbs: []string{"get"}},
	}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "rrguard-test-no-jobs"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "rrguard-test-no-jobs"}}}
	for _, o := range []client.Object{role, binding} {
		if err := env.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), o) })
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "rrguard-test-no-jobs"}
	stop, err := env.ServeRRGuardWith(ctx, cfg, func(o *serve.Options) { o.Policies = nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	p := targets[2].policy(t)
	p.Name = "forbidden-jobs"
	p.Spec.Target.Namespaces = []string{ns}
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	st := waitCondition(ctx, t, p.Name, rrguardv1.ConditionWatching, metav1.ConditionFalse, "TargetNotWatchable", 20*time.Second)
	c := meta.FindStatusCondition(st.Conditions, rrguardv1.ConditionWatching)
	if !strings.Contains(c.Message, "forbidden") || meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced) {
		t.Fatalf("status %+v", st.Conditions)
	}
	// Nor does a Job wait on it: no webhook is written for it, so creates pass, unnamed.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		u := targets[2].object(ns)
		u.SetGenerateName("")
		u.SetName("not-judged")
		last = env.Client.Create(ctx, u, client.DryRunAll)
		return last == nil && u.GetName() == "not-judged", nil
	}); err != nil {
		t.Fatalf("a Job create under a policy that cannot watch Jobs: %v (last: %v)", err, last)
	}
	var mut admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &mut); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(mut.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool { return strings.HasPrefix(w.Name, p.Name+".") }) {
		t.Fatalf("a webhook is configured for a policy that cannot watch its target")
	}
}

// A change of a policy's message alone swaps the handlers on the running watch: nothing of the
// target is read again (while a change of the in-flight expression, which judges every object
// anew, lists and watches it again), and the next 409 carries the new message.
func TestAMessageChangeKeepsTheWatch(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "message", 3*time.Minute)
	tg := targets[0]
	g := &testenv.Gate{}
	// Lists and watches of the target (PipelineRuns): a collection's path ends in its resource.
	g.Count(func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/pipelineruns")
	})
	stop, err := env.ServeRRGuardWith(ctx, testenv.Gated(env.Config, g), func(o *serve.Options) { o.Policies = nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	p := lifePolicy(t, "message-pipelineruns", ns)
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "Enforced", enforceWithin)
	change := func(generation int64, edit func(*rrguardv1.UniquenessPolicySpec)) (reads int64) {
		t.Helper()
		before := g.Counted()
		if err := retryConflict(func() error {
			var cur rrguardv1.UniquenessPolicy
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
				return err
			}
			edit(&cur.Spec)
			return env.Client.Update(ctx, &cur)
		}); err != nil {
			t.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, enforceWithin, true, func(ctx context.Context) (bool, error) {
			st := policyStatus(ctx, t, p.Name)
			return st.ObservedGeneration == generation && meta.IsStatusConditionTrue(st.Conditions, rrguardv1.ConditionEnforced), nil
		}); err != nil {
			t.Fatalf("generation %d not enforced: %v", generation, err)
		}
		return g.Counted() - before
	}
	const message = "a PipelineRun of this branch is running: wait for it"
	if reads := change(2, func(s *rrguardv1.UniquenessPolicySpec) { s.Message = message }); reads != 0 {
		t.Fatalf("a change of the message read the target %d times: want none", reads)
	}
	first := tg.object(ns)
	if err := env.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, tg.object(ns)); !apierrors.IsAlreadyExists(err) || !strings.Contains(err.Error(), message) {
		t.Fatalf("a repeat after the message changed: %v; want a 409 with %q", err, message)
	}
	// The counter sees a new generation's reads of the target: the same rule written anew is one.
	if reads := change(3, func(s *rrguardv1.UniquenessPolicySpec) { s.InFlight = "(" + s.InFlight + ") || 1 < 0" }); reads == 0 {
		t.Fatal("a change of the in-flight expression read nothing of the target: the count cannot see a new watch")
	}
}
