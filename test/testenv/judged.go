package testenv

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/kubernaut/cluster"
)

// JudgeOnly restricts rrguard's installed webhook configurations to namespaces that match sel,
// so that one control plane holds namespaces with and without rrguard in the path.
func (e *Env) JudgeOnly(ctx context.Context, sel *metav1.LabelSelector) error {
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := e.Client.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
		return err
	}
	for i := range m.Webhooks {
		m.Webhooks[i].NamespaceSelector = sel
	}
	if err := e.Client.Update(ctx, &m); err != nil {
		return err
	}
	// The check: rrguard's validating webhook, or the policy's binding, whichever is installed.
	var v admissionregistrationv1.ValidatingWebhookConfiguration
	switch err := e.Client.Get(ctx, client.ObjectKey{Name: "rrguard-validating-webhook-configuration"}, &v); {
	case err == nil:
		for i := range v.Webhooks {
			v.Webhooks[i].NamespaceSelector = sel
		}
		if err := e.Client.Update(ctx, &v); err != nil {
			return err
		}
	case !apierrors.IsNotFound(err):
		return err
	}
	var b admissionregistrationv1.ValidatingAdmissionPolicyBinding
	switch err := e.Client.Get(ctx, client.ObjectKey{Name: e.BindingName()}, &b); {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	}
	if b.Spec.MatchResources == nil {
		b.Spec.MatchResources = &admissionregistrationv1.MatchResources{}
	}
	b.Spec.MatchResources.NamespaceSelector = sel
	return e.Client.Update(ctx, &b)
}

// WaitJudged waits until a dry-run create in ns is named by rrguard (judged) or left alone (not
// judged): the API server learns namespace labels and webhook configurations through its own
// informers, a moment after they are written. rrguard must be serving.
func (e *Env) WaitJudged(ctx context.Context, ns string, judged bool) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if judged {
			_, last = cluster.Check(ctx, e.Client, ns)
			return last == nil, nil
		}
		// Left alone means by the webhook and by the policy alike, which the API server learns of
		// separately: a name of the caller's own must be accepted as it is.
		rr := NewRR(ns, Fingerprint(ns+"/not-judged-probe"))
		rr.GenerateName, rr.Name = "", "not-judged-probe"
		last = e.Client.Create(ctx, rr, client.DryRunAll)
		if last == nil && rr.Name != "not-judged-probe" {
			last = fmt.Errorf("renamed to %s", rr.Name)
		}
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s judged=%v not reached: %w (last check: %v)", ns, judged, err, last)
	}
	return nil
}

// PointNamer re-points rrguard's mutating webhook at another replica's address (host:port) and
// waits until the API server calls it there: dry-run creates answered by that replica, as seen
// by answered (which the replica's AfterRead hook should advance); with answered nil, it does not
// wait.
func (e *Env) PointNamer(ctx context.Context, addr, ns string, answered func() int) error {
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := e.Client.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
		return err
	}
	for i := range m.Webhooks {
		u, err := url.Parse(*m.Webhooks[i].ClientConfig.URL)
		if err != nil {
			return err
		}
		u.Host = addr
		s := u.String()
		m.Webhooks[i].ClientConfig.URL = &s
	}
	if err := e.Client.Update(ctx, &m); err != nil {
		return err
	}
	if answered == nil {
		return nil
	}
	before := answered()
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, _ = cluster.Check(ctx, e.Client, ns)
		return answered() > before, nil
	})
}

// SetNamerTimeout sets the mutating webhook's timeoutSeconds (tests that hold a decision).
func (e *Env) SetNamerTimeout(ctx context.Context, seconds int32) error {
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := e.Client.Get(ctx, client.ObjectKey{Name: "rrguard-mutating-webhook-configuration"}, &m); err != nil {
		return err
	}
	for i := range m.Webhooks {
		m.Webhooks[i].TimeoutSeconds = &seconds
	}
	return e.Client.Update(ctx, &m)
}

// WithoutWebhooks runs fn with rrguard's webhook configurations and policy removed, as before an
// install.
func (e *Env) WithoutWebhooks(ctx context.Context, t testing.TB, fn func()) {
	t.Helper()
	p, _, err := Policy(e.Root)
	if err != nil {
		t.Fatal(err)
	}
	var installed admissionregistrationv1.ValidatingAdmissionPolicy
	switch err := e.Client.Get(ctx, client.ObjectKeyFromObject(p), &installed); {
	case err == nil:
		if err := e.RemovePolicy(ctx); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := e.InstallPolicy(ctx); err != nil {
				t.Fatal(err)
			}
		}()
	case !apierrors.IsNotFound(err):
		t.Fatal(err)
	}
	w := e.Environment().WebhookInstallOptions
	for _, m := range w.MutatingWebhooks {
		if err := e.Client.Delete(ctx, m.DeepCopy()); err != nil {
			t.Fatal(err)
		}
	}
	var removed []*admissionregistrationv1.ValidatingWebhookConfiguration
	for _, v := range w.ValidatingWebhooks {
		switch err := e.Client.Delete(ctx, v.DeepCopy()); {
		case err == nil:
			removed = append(removed, v)
		case !apierrors.IsNotFound(err):
			t.Fatal(err)
		}
	}
	defer func() {
		for _, m := range w.MutatingWebhooks {
			c := m.DeepCopy()
			c.ResourceVersion = ""
			if err := e.Client.Create(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range removed {
			c := v.DeepCopy()
			c.ResourceVersion = ""
			if err := e.Client.Create(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
	}()
	fn()
}

// UseCheck makes the check after every mutation rrguard's validating webhook (webhook true) or
// the policy (false). The Env must have been started with CheckWebhook, so that it knows the
// validating webhook's configuration.
func (e *Env) UseCheck(ctx context.Context, webhook bool) error {
	w := e.Environment().WebhookInstallOptions
	if len(w.ValidatingWebhooks) == 0 {
		return fmt.Errorf("testenv: UseCheck needs Options.CheckWebhook")
	}
	for _, v := range w.ValidatingWebhooks {
		c := v.DeepCopy()
		c.ResourceVersion = ""
		var err error
		if webhook {
			err = e.Client.Create(ctx, c)
			if apierrors.IsAlreadyExists(err) {
				err = nil
			}
		} else {
			err = client.IgnoreNotFound(e.Client.Delete(ctx, c))
		}
		if err != nil {
			return err
		}
	}
	if webhook {
		return e.RemovePolicy(ctx)
	}
	return e.InstallPolicy(ctx)
}

// offLabel marks the namespaces UnjudgedNamespace creates.
const offLabel = "rrguard.test/off"

// UnjudgedNamespace creates a namespace that rrguard's webhook and policy leave alone (they judge
// every namespace without offLabel from then on), as on a cluster without rrguard, and waits
// until the API server knows it, and until judged, if given, is judged again. rrguard must be
// serving.
func (e *Env) UnjudgedNamespace(ctx context.Context, prefix string, judged ...string) (string, error) {
	if err := e.JudgeOnly(ctx, &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: offLabel, Operator: metav1.LabelSelectorOpDoesNotExist}}}); err != nil {
		return "", err
	}
	off := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: map[string]string{offLabel: "true"}}}
	if err := e.Client.Create(ctx, off); err != nil {
		return "", err
	}
	if err := e.WaitJudged(ctx, off.Name, false); err != nil {
		return "", err
	}
	for _, ns := range judged {
		if err := e.WaitJudged(ctx, ns, true); err != nil {
			return "", err
		}
	}
	return off.Name, nil
}
