package serve

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// A replica binds every port it serves on in New, before anything serves. controller-runtime's
// webhook and metrics servers bind theirs only once the manager runs, each on its own: a port
// another process holds then stops the manager after the other server has already answered for a
// while (issue 27: the webhook admitted a create, then everything stopped). Bound in New, a port
// that is taken is New's error, naming the address, and the binary exits non-zero having served
// nothing; a port of 0 is resolved at once (Replica.WebhookAddr, MetricsAddr). The health probe's
// listener is bound in New already (controller-runtime binds it in NewManager).

// serverShutdownTimeout bounds a listener's graceful shutdown, as controller-runtime's own
// servers do; the manager's GracefulShutdownTimeout ends the wait sooner.
const serverShutdownTimeout = time.Minute

// maxHeaderBytes and readHeaderTimeout are controller-runtime's for its servers: a webhook or
// metrics request header is small, and a client that trickles one is cut off.
const (
	maxHeaderBytes    = 1 << 20
	readHeaderTimeout = 32 * time.Second
	idleTimeout       = 90 * time.Second // http.DefaultTransport's keep-alive, as controller-runtime's
)

func newHTTPServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler: h, MaxHeaderBytes: maxHeaderBytes, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout,
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
}

// listen binds addr for what, naming both in the error.
func listen(what, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("the %s listener on %s: %w", what, addr, err)
	}
	return l, nil
}

// webhookServer is controller-runtime's webhook server (its mux, with its request metrics) served
// on a TLS listener bound in New.
type webhookServer struct {
	*crwebhook.DefaultServer
	l       net.Listener // TLS
	started atomic.Bool
}

var _ crwebhook.Server = (*webhookServer)(nil)

func newWebhookServer(host string, port int, tlsConfig *tls.Config) (*webhookServer, error) {
	l, err := listen("webhook", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	return &webhookServer{
		DefaultServer: crwebhook.NewServer(crwebhook.Options{}).(*crwebhook.DefaultServer),
		l:             tls.NewListener(l, tlsConfig),
	}, nil
}

// Start implements webhook.Server: it serves until ctx is done, then drains.
func (s *webhookServer) Start(ctx context.Context) error {
	ctrl.Log.WithName("webhook").Info("serving webhooks", "addr", s.l.Addr().String())
	s.started.Store(true)
	srv := &manager.Server{Name: "webhook", Server: newHTTPServer(ctx, s.WebhookMux()), Listener: s.l, ShutdownTimeout: ptr.To(serverShutdownTimeout)}
	return srv.Start(ctx)
}

// StartedChecker implements webhook.Server: ready once a TLS handshake with the listener succeeds.
func (s *webhookServer) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		if !s.started.Load() {
			return fmt.Errorf("the webhook server has not started yet")
		}
		d := &net.Dialer{Timeout: 10 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", s.l.Addr().String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a liveness dial of our own listener
		if err != nil {
			return fmt.Errorf("the webhook server is not reachable: %w", err)
		}
		return conn.Close()
	}
}

// newMetricsServer serves controller-runtime's metrics registry on addr, bound now: plain HTTP,
// or, secure, HTTPS with a self-signed certificate to callers the API server authenticates and
// authorizes (metricsAuth). nil for addr "0" or "": no metrics server.
func newMetricsServer(addr string, secure bool, cfg *rest.Config, hc *http.Client) (*manager.Server, error) {
	if addr == "" || addr == "0" {
		return nil, nil
	}
	var h http.Handler = promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
	var tlsConfig *tls.Config
	if secure {
		filter, err := metricsAuth(cfg, hc)
		if err != nil {
			return nil, fmt.Errorf("the metrics server's authorization: %w", err)
		}
		if h, err = filter(ctrl.Log.WithName("metrics"), h); err != nil {
			return nil, fmt.Errorf("the metrics server's authorization: %w", err)
		}
		// A self-signed certificate: the ServiceMonitor authenticates with its token, and the
		// answer carries nothing secret.
		cert, key, err := certutil.GenerateSelfSignedCertKeyWithFixtures("localhost", []net.IP{net.IPv4(127, 0, 0, 1)}, nil, "")
		if err != nil {
			return nil, fmt.Errorf("the metrics server's certificate: %w", err)
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("the metrics server's certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	}
	l, err := listen("metrics", addr)
	if err != nil {
		return nil, err
	}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	// The manager closes the listener when it stops; a replica New built but never ran is
	// collected with it.
	return &manager.Server{Name: "metrics", Server: newHTTPServer(context.Background(), mux), Listener: l, ShutdownTimeout: ptr.To(serverShutdownTimeout)}, nil
}
