package testenv

import (
	"net/http"
	"slices"
	"sync"
	"sync/atomic"

	"k8s.io/client-go/rest"
)

// Requests counts the HTTP requests a client made, reads and writes apart. Reads are GETs of
// resources: not watches, and not discovery (/api, /apis), which a client does once per type.
type Requests struct {
	All, Writes, Reads atomic.Int64
	mu                 sync.Mutex
	paths              []string // the last reads, for a failing test to show
}

// Paths are the last 20 reads counted.
func (n *Requests) Paths() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.paths)
}

// Counting returns a copy of cfg whose requests are counted in n.
func Counting(cfg *rest.Config, n *Requests) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			n.All.Add(1)
			switch {
			case r.Method != http.MethodGet && r.Method != http.MethodHead:
				n.Writes.Add(1)
			case r.URL.Query().Get("watch") != "true" && r.URL.Path != "/api" && r.URL.Path != "/apis":
				n.Reads.Add(1)
				n.mu.Lock()
				n.paths = append(n.paths, r.URL.Path+"?"+r.URL.RawQuery)
				if len(n.paths) > 20 {
					n.paths = n.paths[1:]
				}
				n.mu.Unlock()
			}
			return rt.RoundTrip(r)
		})
	})
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
