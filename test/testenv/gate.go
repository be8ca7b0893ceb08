package testenv

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"k8s.io/client-go/rest"
)

// Gate is a fault injector at a client's transport, so that tests force interleavings without a
// hook in rrguard's own types: it holds a watch's stream (the process's index then lags, as a
// late watch does) or a read's answer (a decision then waits between its reads and its answer),
// and counts the requests it matched.
type Gate struct {
	mu      sync.Mutex
	watches string        // resource whose watch streams are held, while held is open
	held    chan struct{} // closed by Release
	// respond: the next response matching it is held until resume is closed; hit is closed when
	// one is.
	respond func(*http.Request) bool
	hit     chan struct{}
	resume  chan struct{}
	counted func(*http.Request) bool
	count   atomic.Int64
}

// Gated returns a copy of cfg whose requests pass through g.
func Gated(cfg *rest.Config, g *Gate) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if f := g.counter(); f != nil && f(r) {
				g.count.Add(1)
			}
			resp, err := rt.RoundTrip(r)
			if err != nil {
				return resp, err
			}
			if hit, resume := g.takeRespond(r); hit != nil {
				close(hit)
				<-resume
			}
			if isWatch(r) {
				resp.Body = &gatedBody{ReadCloser: resp.Body, g: g, resource: resourceOf(r)}
			}
			return resp, nil
		})
	})
	return c
}

// HoldWatches stops the watch streams of resource (plural name) from delivering anything more
// until Release: what the API server sends meanwhile waits, in order.
func (g *Gate) HoldWatches(resource string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.watches, g.held = resource, make(chan struct{})
}

// Release ends HoldWatches; a Release without a hold does nothing.
func (g *Gate) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.watches, g.held = "", nil
	}
}

// HoldNextResponse holds the answer to the next request that match accepts, once the API server
// has given it, until resume is closed; hit is closed when that happens.
func (g *Gate) HoldNextResponse(match func(*http.Request) bool) (hit <-chan struct{}, resume chan<- struct{}) {
	h, r := make(chan struct{}), make(chan struct{})
	g.mu.Lock()
	g.respond, g.hit, g.resume = match, h, r
	g.mu.Unlock()
	return h, r
}

// Count counts, from now on, the requests match accepts (Counted reads it).
func (g *Gate) Count(match func(*http.Request) bool) {
	g.mu.Lock()
	g.counted = match
	g.mu.Unlock()
}

// Counted is the number of requests counted since Count.
func (g *Gate) Counted() int64 { return g.count.Load() }

func (g *Gate) counter() func(*http.Request) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.counted
}

func (g *Gate) takeRespond(r *http.Request) (chan struct{}, chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.respond == nil || !g.respond(r) {
		return nil, nil
	}
	hit, resume := g.hit, g.resume
	g.respond, g.hit, g.resume = nil, nil, nil
	return hit, resume
}

// gate returns the channel a read of resource's watch must wait on, or nil.
func (g *Gate) gate(resource string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil && g.watches == resource {
		return g.held
	}
	return nil
}

type gatedBody struct {
	io.ReadCloser
	g        *Gate
	resource string
}

// Read waits while held, before and after reading: a Read already blocked for data when the hold
// began must not deliver what arrives during it.
func (b *gatedBody) Read(p []byte) (int, error) {
	if held := b.g.gate(b.resource); held != nil {
		<-held
	}
	n, err := b.ReadCloser.Read(p)
	if held := b.g.gate(b.resource); held != nil {
		<-held
	}
	return n, err
}

func isWatch(r *http.Request) bool { return r.URL.Query().Get("watch") == "true" }

// resourceOf is the resource a request's path names:
// /api/<v>/[namespaces/<ns>/]<resource>[/<name>] or /apis/<g>/<v>/[namespaces/<ns>/]<resource>[/<name>].
func resourceOf(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return ""
	}
	if parts[0] == "namespaces" && len(parts) >= 3 {
		return parts[2]
	}
	return parts[0]
}

// Resource matches requests with method for resource (plural name) in namespace ("" any).
func Resource(method, namespace, resource string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == method && resourceOf(r) == resource && !isWatch(r) &&
			(namespace == "" || strings.Contains(r.URL.Path, "/namespaces/"+namespace+"/"))
	}
}
