package serve

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"k8s.io/client-go/rest"
)

// An API server nothing answers at: New binds its listeners before it reads anything.
var unreachable = &rest.Config{Host: "https://127.0.0.1:1"}

// A port another process holds fails New itself, naming the listener and the address, so that
// nothing serves (issue 27: the manager bound its servers one by one as it ran, and served its
// webhooks before the metrics bind failed and stopped it).
func TestATakenPortFailsNew(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	port := held.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		name, listener string
		o              Options
	}{
		{"webhook", "webhook", Options{Host: "127.0.0.1", Port: port, MetricsAddr: "0"}},
		{"metrics over HTTPS", "metrics", Options{Host: "127.0.0.1", MetricsAddr: addr, MetricsSecure: true}},
		{"metrics over HTTP", "metrics", Options{Host: "127.0.0.1", MetricsAddr: addr}},
		{"health probe", "health probe", Options{Host: "127.0.0.1", MetricsAddr: "0", ProbeAddr: addr}},
	} {
		tc.o.MarksNamespace = "rrguard-system"
		r, err := New(unreachable, tc.o)
		if r != nil || !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), tc.listener) || !strings.Contains(err.Error(), addr) {
			t.Errorf("%s: New gave %v, %v; want EADDRINUSE naming the %s listener and %s", tc.name, r, err, tc.listener, addr)
		}
	}
}

// A webhook URL the API server would refuse in a webhook's client configuration fails New, before
// anything binds, instead of failing every reconcile of every policy.
func TestABadWebhookURLFailsNew(t *testing.T) {
	for _, u := range []string{"127.0.0.1:9443", "http://127.0.0.1:9443", "https://", "https://u@h:1", "https://h:1/?q=1", "https://h:1/#f", "://x"} {
		o := Options{Host: "127.0.0.1", MetricsAddr: "0", MarksNamespace: "rrguard-system"}
		o.PolicyWebhookClient.URL = &u
		r, err := New(unreachable, o)
		if r != nil || err == nil || !strings.Contains(err.Error(), "webhook URL") {
			t.Errorf("%q: New gave %v, %v; want an error naming the webhook URL", u, r, err)
		}
	}
	good := "https://127.0.0.1:9443"
	if err := checkWebhookURL(good); err != nil {
		t.Errorf("%s: %v", good, err)
	}
}
