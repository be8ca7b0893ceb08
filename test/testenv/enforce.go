package testenv

import (
	"context"
	"slices"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/webhook/serve"
)

// enforceWait bounds the wait for a policy's webhook to be in the API server's path, and gone.
const enforceWait = 30 * time.Second

// EnforceHeld creates the Queue or Replace policy p and waits until a dry-run create of what
// probe makes comes back held by it (AwaitHeld). p is deleted, and its webhook gone, when the
// test ends.
func (e *Env) EnforceHeld(ctx context.Context, t testing.TB, p *rrguardv1.UniquenessPolicy, probe func() client.Object) {
	t.Helper()
	if err := e.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.DeletePolicy(p.Name) })
	e.AwaitHeld(ctx, t, p.Name, probe)
}

// AwaitHeld waits until a dry-run create of what probe makes comes back held by policy: a
// replica enforces it and the API server calls that replica.
func (e *Env) AwaitHeld(ctx context.Context, t testing.TB, policyName string, probe func() client.Object) {
	t.Helper()
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, enforceWait, true, func(ctx context.Context) (bool, error) {
		o := probe()
		last = e.Client.Create(ctx, o, client.DryRunAll)
		return last == nil && o.GetAnnotations()[policy.AnnotationHeld] != "" && o.GetAnnotations()[policy.AnnotationPolicy] == policyName, nil
	}); err != nil {
		t.Fatalf("policy %s: creates are not held: %v (last: %v)", policyName, err, last)
	}
}

// DeletePolicy deletes a UniquenessPolicy and waits until rrguard has removed its webhook.
func (e *Env) DeletePolicy(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), enforceWait)
	defer cancel()
	_ = e.Client.Delete(ctx, &rrguardv1.UniquenessPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}})
	_ = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := e.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &mwc); err != nil {
			return apierrors.IsNotFound(err), nil
		}
		return !slices.ContainsFunc(mwc.Webhooks, func(w admissionregistrationv1.MutatingWebhook) bool {
			return w.Name == policy.GeneratedName(name)
		}), nil
	})
}

// Released reports whether a Queue or Replace policy admitted o and has released it since: it
// carries rrguard's admission instant and no longer its hold.
func Released(o metav1.Object) bool {
	_, admitted := o.GetAnnotations()[policy.AnnotationQueued]
	_, held := o.GetAnnotations()[policy.AnnotationHeld]
	return admitted && !held
}
