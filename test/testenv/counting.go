package testenv

import (
	"net/http"
	"slices"
	"strings"
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
	writes             []string // the writes, "METHOD path", up to maxWritesKept
}

// maxWritesKept bounds the writes a Requests keeps for WritesTo: a benchmark's millions of writes
// are counted, not kept.
const maxWritesKept = 10000

// WritesTo are the writes ("METHOD path") whose path holds any of the resources named.
func (n *Requests) WritesTo(resources ...string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, w := range n.writes {
		for _, r := range resources {
			if strings.Contains(w, "/"+r) {
				out = append(out, w)
				break
			}
		}
	}
	return out
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
				n.mu.Lock()
				if len(n.writes) < maxWritesKept {
					n.writes = append(n.writes, r.Method+" "+r.URL.Path)
				}
				n.mu.Unlock()
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
