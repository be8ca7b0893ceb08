package serve

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/utils/ptr"
)

// The policies' webhooks take the CA from the file where it is, keep the stored (injected) one where
// there is no file, and are not written at all while the file is there but empty.
func TestPolicyWebhookCA(t *testing.T) {
	dir := t.TempDir()
	ca, empty := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(ca, []byte("CA"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	svc := admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Namespace: "rrguard-system", Name: "rrguard-webhook-service"}}
	if _, err := (Options{}).policyWebhookClient(); !errors.Is(err, ErrNoWebhookClient) {
		t.Errorf("no client configuration: %v, want ErrNoWebhookClient", err)
	}
	c, err := (Options{PolicyWebhookClient: svc, PolicyWebhookCAFile: ca}).policyWebhookClient()
	if err != nil || string(c.CABundle) != "CA" || c.Service.Port == nil || *c.Service.Port != 443 {
		t.Errorf("with the CA file: %+v, %v", c, err)
	}
	if c, err := (Options{PolicyWebhookClient: svc, PolicyWebhookCAFile: filepath.Join(dir, "none")}).policyWebhookClient(); err != nil || len(c.CABundle) != 0 {
		t.Errorf("no CA file: %+v, %v; want no bundle of rrguard's (the injector's is kept)", c, err)
	}
	if _, err := (Options{PolicyWebhookClient: svc, PolicyWebhookCAFile: empty}).policyWebhookClient(); err == nil {
		t.Error("an empty CA file: no error; the webhooks would be written without a CA")
	}

	stored := []admissionregistrationv1.MutatingWebhook{
		{Name: "a.policies.rrguard.kubernaut.ai", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte("A")}},
		{Name: "b.policies.rrguard.kubernaut.ai", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte("B")}},
	}
	want := []admissionregistrationv1.MutatingWebhook{
		{Name: "b.policies.rrguard.kubernaut.ai"},
		{Name: "c.policies.rrguard.kubernaut.ai"},
		{Name: "d.policies.rrguard.kubernaut.ai", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: []byte("D"), URL: ptr.To("https://x")}},
	}
	keepCABundles(want, stored,
		func(w *admissionregistrationv1.MutatingWebhook) *admissionregistrationv1.WebhookClientConfig {
			return &w.ClientConfig
		},
		func(w *admissionregistrationv1.MutatingWebhook) string { return w.Name })
	if got := []string{string(want[0].ClientConfig.CABundle), string(want[1].ClientConfig.CABundle), string(want[2].ClientConfig.CABundle)}; got[0] != "B" || got[1] == "" || got[2] != "D" {
		t.Errorf("CA bundles after keepCABundles: %q; want its own stored one, any stored one, rrguard's own", got)
	}
}
