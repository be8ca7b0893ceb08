package serve

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// injectAnnotation is how config/default asks cert-manager's cainjector to put the serving
// certificate's CA into a webhook configuration.
const injectAnnotation = "cert-manager.io/inject-ca-from"

// CertReport is the state of rrguard's serving certificate as the API server depends on it.
type CertReport struct {
	Certificate string // namespace/name
	Ready       bool
	Reason      string // the Ready condition's message when not ready
	NotAfter    time.Time
	Issuer      string // Kind/name
	// Webhooks are the webhooks of every configuration that asks for this certificate's CA.
	Webhooks []WebhookTrust
}

// WebhookTrust says whether the API server, calling one webhook, would accept the certificate
// rrguard serves: the webhook's caBundle must verify it for the Service's DNS name.
type WebhookTrust struct {
	Configuration, Webhook string
	Trusted                bool
	Problem                string
}

// ErrCertificate is returned when the serving certificate would fail the API server's calls.
var ErrCertificate = errors.New("the serving certificate would fail the API server's calls to rrguard")

// Err is nil when the certificate is ready, unexpired at now, and trusted by every webhook that
// uses it; otherwise it says what is wrong.
func (r CertReport) Err(now time.Time) error {
	switch {
	case !r.Ready:
		return fmt.Errorf("%w: Certificate %s is not Ready: %s", ErrCertificate, r.Certificate, r.Reason)
	case !now.Before(r.NotAfter):
		return fmt.Errorf("%w: Certificate %s expired at %s", ErrCertificate, r.Certificate, r.NotAfter.Format(time.RFC3339))
	case len(r.Webhooks) == 0:
		return fmt.Errorf("%w: no webhook configuration has %s=%s", ErrCertificate, injectAnnotation, r.Certificate)
	}
	for _, w := range r.Webhooks {
		if !w.Trusted {
			return fmt.Errorf("%w: webhook %s of %s: %s", ErrCertificate, w.Webhook, w.Configuration, w.Problem)
		}
	}
	return nil
}

// CheckCertificate reads the cert-manager Certificate namespace/name, its Secret, and the webhook
// configurations that ask for its CA, and reports whether the API server's calls would succeed.
// c must know cert-manager's types (cmapi.AddToScheme).
func CheckCertificate(ctx context.Context, c client.Reader, namespace, name string) (CertReport, error) {
	var cert cmapi.Certificate
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &cert); err != nil {
		return CertReport{}, fmt.Errorf("reading Certificate %s/%s: %w", namespace, name, err)
	}
	var secret corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: cert.Spec.SecretName}, &secret); err != nil {
		return CertReport{}, fmt.Errorf("reading the serving certificate's Secret %s/%s: %w", namespace, cert.Spec.SecretName, err)
	}
	var muts admissionregistrationv1.MutatingWebhookConfigurationList
	if err := c.List(ctx, &muts); err != nil {
		return CertReport{}, err
	}
	var vals admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := c.List(ctx, &vals); err != nil {
		return CertReport{}, err
	}
	return AssessCertificate(&cert, &secret, muts.Items, vals.Items), nil
}

// AssessCertificate is CheckCertificate on objects already read.
func AssessCertificate(cert *cmapi.Certificate, secret *corev1.Secret, muts []admissionregistrationv1.MutatingWebhookConfiguration,
	vals []admissionregistrationv1.ValidatingWebhookConfiguration) CertReport {
	r := CertReport{Certificate: cert.Namespace + "/" + cert.Name, Issuer: cert.Spec.IssuerRef.Kind + "/" + cert.Spec.IssuerRef.Name}
	for _, cond := range cert.Status.Conditions {
		if cond.Type == cmapi.CertificateConditionReady {
			r.Ready, r.Reason = cond.Status == cmmeta.ConditionTrue, cond.Message
		}
	}
	if cert.Status.NotAfter != nil {
		r.NotAfter = cert.Status.NotAfter.Time
	}
	leaf, leafErr := parseLeaf(secret.Data[corev1.TLSCertKey])
	trust := func(config, webhook string, cc admissionregistrationv1.WebhookClientConfig) WebhookTrust {
		w := WebhookTrust{Configuration: config, Webhook: webhook}
		pool := x509.NewCertPool()
		host, hostErr := serverName(cc)
		switch {
		case leafErr != nil:
			w.Problem = leafErr.Error()
		case hostErr != nil:
			w.Problem = hostErr.Error()
		case !pool.AppendCertsFromPEM(cc.CABundle):
			w.Problem = "caBundle holds no certificate (not injected yet?)"
		default:
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
				w.Problem = fmt.Sprintf("caBundle does not verify the served certificate for %s: %v", host, err)
			} else {
				w.Trusted = true
			}
		}
		return w
	}
	for _, m := range muts {
		if m.Annotations[injectAnnotation] == r.Certificate {
			for _, wh := range m.Webhooks {
				r.Webhooks = append(r.Webhooks, trust(m.Name, wh.Name, wh.ClientConfig))
			}
		}
	}
	for _, v := range vals {
		if v.Annotations[injectAnnotation] == r.Certificate {
			for _, wh := range v.Webhooks {
				r.Webhooks = append(r.Webhooks, trust(v.Name, wh.Name, wh.ClientConfig))
			}
		}
	}
	return r
}

// serverName is the name the API server verifies rrguard's certificate for: the Service's DNS
// name, or the URL's host.
func serverName(cc admissionregistrationv1.WebhookClientConfig) (string, error) {
	switch {
	case cc.Service != nil:
		return cc.Service.Name + "." + cc.Service.Namespace + ".svc", nil
	case cc.URL != nil:
		u, err := url.Parse(*cc.URL)
		if err != nil {
			return "", fmt.Errorf("clientConfig.url: %w", err)
		}
		return u.Hostname(), nil
	}
	return "", errors.New("clientConfig names neither a Service nor a URL")
}

func parseLeaf(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, errors.New("the Secret holds no tls.crt certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}
