package storm

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/localcp"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/kubernaut/creator"
)

// InFlightWatch replays every change to a namespace's RRs, in the order etcd committed them, and
// records the most RRs of one fingerprint in flight at any of those instants. A check of the end
// state cannot see two RRs in flight at once if one of them finished later; this can.
type InFlightWatch struct {
	c       client.WithWatch
	ns      string
	ctx     context.Context
	lastRV  string
	w       watch.Interface
	done    chan struct{}
	mu      sync.Mutex
	state   map[string]*v1alpha1.RemediationRequest
	max     int
	worst   string // the instant of the worst overlap, for the failure message
	events  int
	err     error
	marked  chan struct{}
	mark    string
	resumed int
	// Names ever issued: name -> UID of the first RR seen under it, and the names seen under a
	// second UID (issued twice).
	uids     map[string]types.UID
	reissued []string
	counts   map[types.UID]int32 // signals last seen held per RR (creator.Signals), deleted ones included
	fpOf     map[types.UID]string
}

var errStopped = fmt.Errorf("stopped")

const markAnnotation = "rrguard.kubernaut.ai/storm-end"

// WatchInFlight starts following ns from now; the namespace's RRs already there are its start.
func WatchInFlight(ctx context.Context, c client.WithWatch, ns string) (*InFlightWatch, error) {
	var list v1alpha1.RemediationRequestList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	w, err := c.Watch(ctx, &v1alpha1.RemediationRequestList{}, client.InNamespace(ns),
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		return nil, err
	}
	iw := &InFlightWatch{c: c, ns: ns, ctx: ctx, lastRV: list.ResourceVersion, w: w, done: make(chan struct{}), state: map[string]*v1alpha1.RemediationRequest{}, marked: make(chan struct{}),
		uids: map[string]types.UID{}, counts: map[types.UID]int32{}, fpOf: map[types.UID]string{}}
	for i := range list.Items {
		iw.state[list.Items[i].Name] = &list.Items[i]
		iw.record(&list.Items[i])
	}
	go iw.follow()
	return iw, nil
}

func (iw *InFlightWatch) follow() {
	defer close(iw.done)
	for {
		iw.drain()
		iw.mu.Lock()
		stop := iw.err != nil || iw.ctx.Err() != nil
		iw.mu.Unlock()
		if stop {
			return
		}
		// The API server closes a watch now and then (timeouts, a slow reader under load):
		// resume from the last event seen, as an informer does; nothing in between is lost.
		w, err := iw.c.Watch(iw.ctx, &v1alpha1.RemediationRequestList{}, client.InNamespace(iw.ns),
			&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: iw.lastRV}})
		iw.mu.Lock()
		if err != nil {
			iw.err = fmt.Errorf("resuming the watch at %s: %w", iw.lastRV, err)
			iw.mu.Unlock()
			return
		}
		iw.w = w
		iw.resumed++
		iw.mu.Unlock()
	}
}

func (iw *InFlightWatch) drain() {
	for ev := range iw.w.ResultChan() {
		iw.mu.Lock()
		rr, ok := ev.Object.(*v1alpha1.RemediationRequest)
		switch {
		case ev.Type == watch.Error || !ok:
			iw.err = fmt.Errorf("watch error: %v", ev.Object)
			iw.mu.Unlock()
			return
		case ev.Type == watch.Deleted:
			delete(iw.state, rr.Name)
		default:
			iw.state[rr.Name] = rr
		}
		iw.lastRV = rr.ResourceVersion
		iw.events++
		iw.record(rr)
		iw.measure(rr.Spec.SignalFingerprint, rr.ResourceVersion)
		if iw.mark != "" && rr.Annotations[markAnnotation] == iw.mark {
			close(iw.marked)
			iw.mark = ""
		}
		iw.mu.Unlock()
	}
}

// record keeps what outlives an RR: the UID its name was first issued to, and its last count.
func (iw *InFlightWatch) record(rr *v1alpha1.RemediationRequest) {
	if uid, ok := iw.uids[rr.Name]; !ok {
		iw.uids[rr.Name] = rr.UID
	} else if uid != rr.UID {
		iw.reissued = append(iw.reissued, rr.Name)
	}
	iw.fpOf[rr.UID] = rr.Spec.SignalFingerprint
	iw.counts[rr.UID] = creator.Signals(rr)
}

// Lifetimes is what the watch saw over every RR that ever existed, deleted ones included.
type Lifetimes struct {
	Names    int            // distinct names issued
	RRs      int            // distinct RRs (UIDs)
	Reissued []string       // names seen under two UIDs
	Counted  map[string]int // last occurrenceCount per RR, summed per fingerprint
}

// Names lists every name the watch saw issued; call it after Stop.
func (iw *InFlightWatch) Names() []string {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	out := make([]string, 0, len(iw.uids))
	for name := range iw.uids {
		out = append(out, name)
	}
	return out
}

// Lifetimes reports names and counts over the whole watch; call it after Stop.
func (iw *InFlightWatch) Lifetimes() Lifetimes {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	l := Lifetimes{Names: len(iw.uids), RRs: len(iw.counts), Reissued: slices.Clone(iw.reissued), Counted: map[string]int{}}
	for uid, n := range iw.counts {
		l.Counted[iw.fpOf[uid]] += int(n)
	}
	return l
}

// measure counts the fingerprint's RRs in flight right after the event at resourceVersion rv.
func (iw *InFlightWatch) measure(fp, rv string) {
	now := time.Now()
	var inflight []string
	for _, rr := range iw.state {
		if rr.Spec.SignalFingerprint == fp && kubernaut.InFlight(rr, now) {
			inflight = append(inflight, rr.Name)
		}
	}
	if len(inflight) > iw.max {
		iw.max = len(inflight)
		iw.worst = fmt.Sprintf("at resourceVersion %s: %v", rv, inflight)
	}
}

// Stop waits until the watch has seen every change up to now (it creates a marker RR of a fingerprint
// of its own and waits for that event), stops it and reports the most RRs of one fingerprint ever
// in flight together, with the instant, and how many events it replayed.
func (iw *InFlightWatch) Stop(ctx context.Context, c client.Client, ns string) (most int, worst string, events int, err error) {
	defer func() {
		iw.mu.Lock()
		iw.err = errStopped
		w := iw.w
		iw.mu.Unlock()
		w.Stop()
	}()
	mark := fmt.Sprint(time.Now().UnixNano())
	iw.mu.Lock()
	iw.mark = mark
	iw.mu.Unlock()
	marker := localcp.NewRR(ns, localcp.Fingerprint(ns+"/watch-marker/"+mark))
	marker.Annotations = map[string]string{markAnnotation: mark}
	if err := c.Create(ctx, marker); err != nil {
		return 0, "", 0, fmt.Errorf("creating the watch's marker: %w", err)
	}
	select {
	case <-iw.marked:
	case <-iw.done:
		return 0, "", 0, fmt.Errorf("the watch ended before it caught up: %v", iw.err)
	case <-ctx.Done():
		return 0, "", 0, fmt.Errorf("the watch did not catch up: %w", ctx.Err())
	}
	iw.mu.Lock()
	defer iw.mu.Unlock()
	return iw.max, iw.worst, iw.events, iw.err
}

// Resumed is how many times the watch was resumed after the API server closed it.
func (iw *InFlightWatch) Resumed() int {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	return iw.resumed
}
