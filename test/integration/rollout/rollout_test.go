// Package rollout checks that a rolling update of rrguard fails no create: three replicas behind
// the local proxy standing in for their Service, a storm of plain creates from clients that do
// not retry, and the replicas replaced one at a time as a Deployment rollout does (a new replica
// ready; the old one's endpoint removed, SIGTERM, its readiness off, the shutdown delay, exit).
// Measured without and with the fix for kubernetes/kubernetes#127335 (a stopping replica answers
// with "Connection: close"; webhook/serve closeWhenStopping).
package rollout

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

// result is one rollout under a storm.
type result struct {
	sent, failed int64
	// stale is the proxy's count of writes from the API server that reached a replica after its
	// endpoint was removed, over connections it kept.
	stale    int64
	errs     sync.Map // message -> *atomic.Int64
	replaced int
}

func (r *result) String() string {
	s := fmt.Sprintf("%d creates sent during %d replacements: %d writes reached a replica after its endpoint was removed; %d creates failed",
		r.sent, r.replaced, r.stale, r.failed)
	r.errs.Range(func(k, v any) bool {
		s += fmt.Sprintf("; %dx %s", v.(*atomic.Int64).Load(), k)
		return true
	})
	return s
}

// rollout runs three replicas, replaces each in turn under a storm of plain creates, and counts
// the creates that failed.
func rollout(t *testing.T) *result {
	ctx, ns := env.TestNamespace(t, "rollout", 5*time.Minute)
	start := func() (string, func() error) {
		t.Helper()
		r, stop, err := env.ServeReplica(ctx, env.Config, testenv.Aside, func(o *serve.Options) {
			o.ShutdownDelay = 2 * time.Second
		})
		if err != nil {
			t.Fatal(err)
		}
		return r.WebhookAddr(), stop
	}
	var addrs []string
	var stops []func() error
	for range 3 {
		a, s := start()
		addrs, stops = append(addrs, a), append(stops, s)
	}
	o := env.ServeOptions()
	proxy, err := testenv.NewProxy(net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), addrs...)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	defer func() {
		for _, s := range stops {
			_ = s()
		}
	}()

	r := &result{}
	stormDone := make(chan struct{})
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stormDone:
					return
				default:
				}
				i := next.Add(1)
				err := env.Client.Create(ctx, testenv.NewRR(ns, testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i))))
				atomic.AddInt64(&r.sent, 1)
				if err != nil {
					atomic.AddInt64(&r.failed, 1)
					n, _ := r.errs.LoadOrStore(errorKind(err), &atomic.Int64{})
					n.(*atomic.Int64).Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Second)
	for i := range stops {
		addr, stop := start()
		// The old replica's endpoint goes as it is told to stop; its open connections stay.
		addrs[i] = addr
		proxy.SetBackends(addrs...)
		if err := stops[i](); err != nil {
			t.Errorf("replica %d stopped with %v", i, err)
		}
		stops[i] = stop
		r.replaced++
		time.Sleep(500 * time.Millisecond)
	}
	close(stormDone)
	wg.Wait()
	r.stale = proxy.Stale()
	return r
}

// errorKind is a failure's message without what differs between requests (names, addresses).
func errorKind(err error) string {
	msg := err.Error()
	for _, cut := range []string{"rrguard could not read", "failed calling webhook"} {
		if i := strings.Index(msg, cut); i >= 0 {
			msg = msg[i:]
		}
	}
	for _, tail := range []string{": Get ", ": Post "} {
		if i := strings.Index(msg, tail); i >= 0 {
			if j := strings.LastIndex(msg, ": "); j > i {
				msg = msg[:i] + " ..." + msg[j:]
			}
		}
	}
	return msg
}

func TestNoFailedCreateThroughARollout(t *testing.T) {
	with := rollout(t)
	t.Logf("with Connection: close once stopping: %s", with)
	if with.replaced != 3 || with.sent < 100 {
		t.Fatalf("the rollout did not happen under a storm: %s", with)
	}
	if with.failed != 0 {
		t.Errorf("creates failed through the rollout: %s", with)
	}
	// The fault the close answers hit: the API server kept writing to replicas over connections
	// opened before their endpoint went (serve.TestDrainedClosesConnectionsWhileStopping checks the
	// close itself). Without the close, 403 such writes and failed creates were measured
	// (docs/design.md, Operations); with it, at most the answer in flight on each connection.
	if with.stale == 0 {
		t.Errorf("no write reached a replica after its endpoint was removed: the rollout did not exercise kept-alive connections: %s", with)
	}
}
