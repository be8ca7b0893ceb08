package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// errNoCert is what a TLS client and /readyz see until a key pair is loaded.
var errNoCert = errors.New("no serving certificate loaded yet")

// servingCert serves the key pair in a folder and follows it as it is rotated (cert-manager
// renews the Secret, the kubelet swaps the mounted files). Unlike controller-runtime's own
// watcher it starts without the files: the replica then runs, unready, until they appear,
// instead of crash-looping while cert-manager issues the first certificate.
type servingCert struct {
	certPath, keyPath string
	watcher           atomic.Pointer[certwatcher.CertWatcher]
}

func newServingCert(dir string) *servingCert {
	return &servingCert{certPath: filepath.Join(dir, "tls.crt"), keyPath: filepath.Join(dir, "tls.key")}
}

// GetCertificate is tls.Config.GetCertificate.
func (s *servingCert) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	w := s.watcher.Load()
	if w == nil {
		return nil, errNoCert
	}
	return w.GetCertificate(hello)
}

// Loaded is a readiness check.
func (s *servingCert) Loaded(*http.Request) error {
	if s.watcher.Load() == nil {
		return errNoCert
	}
	return nil
}

// Start waits for a loadable key pair, then watches it until ctx ends. It is a manager runnable.
func (s *servingCert) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("serving-cert")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		w, err := s.load()
		if err == nil {
			s.watcher.Store(w)
			logger.Info("serving certificate loaded", "cert", s.certPath)
			return w.Start(ctx)
		}
		logger.V(1).Info("waiting for the serving certificate", "reason", err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (s *servingCert) load() (*certwatcher.CertWatcher, error) {
	for _, p := range []string{s.certPath, s.keyPath} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	// New reads and checks the pair; the watcher then follows file events, and polls every few
	// seconds for the kubelet's symlink swaps that file events can miss.
	w, err := certwatcher.New(s.certPath, s.keyPath)
	if err != nil {
		return nil, err
	}
	return w.WithWatchInterval(2 * time.Second), nil
}

// NeedLeaderElection: every replica serves.
func (s *servingCert) NeedLeaderElection() bool { return false }
