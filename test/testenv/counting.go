package testenv

import (
	"net/http"
	"sync/atomic"

	"k8s.io/client-go/rest"
)

// Requests counts the HTTP requests a client made, reads and writes apart. Reads are GETs that
// are not watches.
type Requests struct {
	All, Writes, Reads atomic.Int64
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
			case r.URL.Query().Get("watch") != "true":
				n.Reads.Add(1)
			}
			return rt.RoundTrip(r)
		})
	})
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
