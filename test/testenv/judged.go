package testenv

import (
	"context"
	"fmt"
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
