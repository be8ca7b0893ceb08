package localcp

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"

	"github.com/rrguard/rrguard/webhook/serve"
)

// ServeRRGuard runs an rrguard replica in-process at the address the installed webhook
// configurations name, and returns once it answers TLS. stop ends it and waits until it has.
func (e *Env) ServeRRGuard(ctx context.Context, adjust ...func(*serve.Options)) (stop func() error, err error) {
	return e.ServeRRGuardWith(ctx, e.Config, adjust...)
}

// ServeRRGuardWith is ServeRRGuard with rrguard's own client configuration (to count its
// requests, say).
func (e *Env) ServeRRGuardWith(ctx context.Context, cfg *rest.Config, adjust ...func(*serve.Options)) (stop func() error, err error) {
	_, stop, err = e.ServeReplica(ctx, cfg, adjust...)
	return stop, err
}

// ServeReplica is ServeRRGuardWith that also returns the replica, for tests that look inside
// (its RR index, say).
func (e *Env) ServeReplica(ctx context.Context, cfg *rest.Config, adjust ...func(*serve.Options)) (r *serve.Replica, stop func() error, err error) {
	o := e.ServeOptions()
	for _, f := range adjust {
		f(&o)
	}
	r, err = serve.New(cfg, o)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	// Stop ends every replica before the control plane and the serving certificates go away.
	e.OnStop(stop)
	addr := r.WebhookAddr()
	var last error
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("rrguard stopped before serving: %w", err)
		default:
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // readiness probe only
		if err != nil {
			last = err
			return false, nil
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		_ = stop()
		return nil, nil, fmt.Errorf("rrguard did not serve TLS on %s: %w (last dial: %v)", addr, err, last)
	}
	// A test begins once the marks are seeded (which the seeder does only once the index has
	// synced): until then the replica answers 503.
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return r.Seeded() == nil, nil
	}); err != nil {
		_ = stop()
		return nil, nil, fmt.Errorf("rrguard did not seed its marks: %w", err)
	}
	return r, stop, nil
}
