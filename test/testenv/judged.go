package testenv

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/webhook/serve"
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
	var v admissionregistrationv1.ValidatingWebhookConfiguration
	if err := e.Client.Get(ctx, client.ObjectKey{Name: "rrguard-validating-webhook-configuration"}, &v); err != nil {
		return err
	}
	for i := range v.Webhooks {
		v.Webhooks[i].NamespaceSelector = sel
	}
	return e.Client.Update(ctx, &v)
}

// WaitJudged waits until a dry-run create in ns is named by rrguard (judged) or left alone (not
// judged): the API server learns namespace labels and webhook configurations through its own
// informers, a moment after they are written. rrguard must be serving.
func (e *Env) WaitJudged(ctx context.Context, ns string, judged bool) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, last = serve.Check(ctx, e.Client, ns)
		return (last == nil) == judged, nil
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
		_, _ = serve.Check(ctx, e.Client, ns)
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

// WithoutWebhooks runs fn with rrguard's webhook configurations removed, as before an install.
func (e *Env) WithoutWebhooks(ctx context.Context, t testing.TB, fn func()) {
	t.Helper()
	w := e.Environment().WebhookInstallOptions
	for _, m := range w.MutatingWebhooks {
		if err := e.Client.Delete(ctx, m.DeepCopy()); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range w.ValidatingWebhooks {
		if err := e.Client.Delete(ctx, v.DeepCopy()); err != nil {
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
		for _, v := range w.ValidatingWebhooks {
			c := v.DeepCopy()
			c.ResourceVersion = ""
			if err := e.Client.Create(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
	}()
	fn()
}
