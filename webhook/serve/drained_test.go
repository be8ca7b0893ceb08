package serve

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// Once stopping, each answer closes its connection (so the API server's next request goes
// through the Service to a replica that stays), and a request's context outlives the server's.
func TestDrainedClosesConnectionsWhileStopping(t *testing.T) {
	r := &Replica{}
	var deadline time.Time
	var ctxErr error
	h := r.drained(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		deadline, _ = req.Context().Deadline()
		ctxErr = req.Context().Err()
	}))
	serve := func() *httptest.ResponseRecorder {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the server's context is gone; the request's must not be
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", nil).WithContext(ctx))
		return rec
	}
	if got := serve().Header().Get("Connection"); got != "" {
		t.Fatalf("serving: Connection %q, want none", got)
	}
	if ctxErr != nil || time.Until(deadline) < maxAdmissionTime-time.Second {
		t.Fatalf("request context %v, deadline %v away; want live, about %v", ctxErr, time.Until(deadline), maxAdmissionTime)
	}
	r.stopping.Store(true)
	if got := serve().Header().Get("Connection"); got != "close" {
		t.Fatalf("stopping: Connection %q, want close", got)
	}
}
