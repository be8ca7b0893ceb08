package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/webhook/serve"
)

// Main starts a control plane for a test package, runs its tests and stops it:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{}, &env)) }
func Main(m *testing.M, o Options, env **Env) int {
	// Errors only: a passing run stays quiet, a failing one says what rrguard saw.
	// RRGUARD_TEST_LOG=debug shows everything.
	level := zapcore.ErrorLevel
	if os.Getenv("RRGUARD_TEST_LOG") == "debug" {
		level = zapcore.Level(-10)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	e, err := Start(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stop:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// IndexTrusted sets the timings under which a replica decides from its RR index (see
// serve.Options.IndexMaxLag): a 1 s request bound, a 4 s lag (creation timestamps have whole
// seconds) and a 7 s release hold. The test API server's own request timeout is longer; no test
// holds a create that long.
func IndexTrusted(o *serve.Options) {
	o.RequestTimeout, o.IndexMaxLag, o.ReleaseMinAge = time.Second, 4*time.Second, 7*time.Second
}

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
	addr := net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	var last error
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("rrguard stopped before serving: %v", err)
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

// At is a ServeRRGuard adjustment that serves on addr (host:port), for a replica beside the one
// the webhook configurations name.
func At(addr string) func(*serve.Options) {
	return func(o *serve.Options) {
		host, port, _ := net.SplitHostPort(addr)
		o.Host = host
		o.Port, _ = strconv.Atoi(port)
	}
}
