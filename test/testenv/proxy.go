package testenv

import (
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a round-robin TCP proxy standing in for a Service in front of several rrguard
// replicas. It can hold every new connection for a while, to make rrguard look slow.
type Proxy struct {
	ln       net.Listener
	backends atomic.Pointer[[]string]
	next     atomic.Uint64
	delay    atomic.Int64 // nanoseconds to hold each chunk from a client before forwarding
	delayed  atomic.Int64 // chunks held so far
	heldOut  atomic.Int64 // chunks held for the whole delay so far
	stale    atomic.Int64 // chunks forwarded to a backend no longer in the list
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool // both ends of every open connection, for Close
	closed   bool
}

// NewProxy listens on addr and forwards each connection to the next backend in turn. A backend
// that refuses the connection gets the client's connection closed, as when a Service still
// routes to a pod that just died.
func NewProxy(addr string, backends ...string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, conns: map[net.Conn]bool{}}
	p.SetBackends(backends...)
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// SetBackends replaces the backends new connections go to, as endpoints change when a pod turns
// ready or starts terminating; connections already open stay with their backend, as they do
// through a Service.
func (p *Proxy) SetBackends(backends ...string) {
	b := append([]string(nil), backends...)
	p.backends.Store(&b)
}

// Stale is how many chunks from clients the proxy has forwarded to a backend after SetBackends
// removed it, over connections opened before: the traffic a terminating pod still gets.
func (p *Proxy) Stale() int64 { return p.stale.Load() }

// SetDelay holds every chunk a client sends for d before forwarding it (0: no delay), so each
// request on a kept-alive connection is slowed too.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Delayed is how many chunks the proxy has held so far: how often the slowness hit.
func (p *Proxy) Delayed() int64 { return p.delayed.Load() }

// HeldOut is how many chunks have been held for the whole delay so far.
func (p *Proxy) HeldOut() int64 { return p.heldOut.Load() }

// Close stops accepting and closes every open connection, as a Service that is gone does. (The API
// server keeps idle connections to a webhook open for 90 s: waiting for them to end made every
// test that used a proxy wait that long.)
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track records c as open until the returned func; a connection accepted while Close runs is
// closed at once.
func (p *Proxy) track(c net.Conn) (untrack func()) {
	p.mu.Lock()
	p.conns[c] = true
	if p.closed {
		_ = c.Close()
	}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
	}
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(conn)()
			backends := *p.backends.Load()
			backend := backends[p.next.Add(1)%uint64(len(backends))]
			up, err := net.DialTimeout("tcp", backend, time.Second)
			if err != nil {
				return
			}
			defer p.track(up)()
			done := make(chan struct{}, 2)
			go func() { p.copyDelayed(up, conn, backend); done <- struct{}{} }()
			go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
			<-done
		}()
	}
}

func (p *Proxy) copyDelayed(dst io.Writer, src io.Reader, backend string) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !slices.Contains(*p.backends.Load(), backend) {
				p.stale.Add(1)
			}
			if d := time.Duration(p.delay.Load()); d > 0 {
				p.delayed.Add(1)
				time.Sleep(d) // the fault itself: a slow rrguard
				p.heldOut.Add(1)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// FreeAddr is a loopback address whose port was free a moment ago; another process may take it
// before the caller binds it. Prefer port 0 where the binder says where it bound
// (serve.Replica.WebhookAddr, MetricsAddr; testenv.Aside); FreeAddr is for a listener that does
// not, and its caller retries an EADDRINUSE with a new one.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
