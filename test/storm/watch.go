package storm

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/rules"
)

// InFlightWatch replays every change to a namespace's RRs, in the order etcd committed them, and
// records the most RRs of one fingerprint in flight at any of those instants. A check of the end
// state cannot see two RRs in flight at once if one of them finished later; this can.
type InFlightWatch struct {
	w      watch.Interface
	done   chan struct{}
	mu     sync.Mutex
	state  map[string]*v1alpha1.RemediationRequest
	max    int
	worst  string // the instant of the worst overlap, for the failure message
	events int
	err    error
	marked chan struct{}
	mark   string
}

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
	iw := &InFlightWatch{w: w, done: make(chan struct{}), state: map[string]*v1alpha1.RemediationRequest{}, marked: make(chan struct{})}
	for i := range list.Items {
		iw.state[list.Items[i].Name] = &list.Items[i]
	}
	go iw.follow()
	return iw, nil
}

func (iw *InFlightWatch) follow() {
	defer close(iw.done)
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
		iw.events++
		iw.measure(rr.Spec.SignalFingerprint, rr.ResourceVersion)
		if iw.mark != "" && rr.Annotations[markAnnotation] == iw.mark {
			close(iw.marked)
			iw.mark = ""
		}
		iw.mu.Unlock()
	}
}

// measure counts the fingerprint's RRs in flight right after the event at resourceVersion rv.
func (iw *InFlightWatch) measure(fp, rv string) {
	now := time.Now()
	var inflight []string
	for _, rr := range iw.state {
		if rr.Spec.SignalFingerprint == fp && rules.InFlight(rr, now) {
			inflight = append(inflight, rr.Name)
		}
	}
	if len(inflight) > iw.max {
		iw.max = len(inflight)
		iw.worst = fmt.Sprintf("at resourceVersion %s: %v", rv, inflight)
	}
}

// Stop waits until the watch has seen every change up to now (it writes a marker annotation on
// one RR of the namespace and waits for that event), stops it and reports the most RRs of one
// fingerprint ever in flight together, with the instant, and how many events it replayed.
func (iw *InFlightWatch) Stop(ctx context.Context, c client.Client, ns string) (most int, worst string, events int, err error) {
	defer iw.w.Stop()
	var list v1alpha1.RemediationRequestList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.Limit(1)); err != nil {
		return 0, "", 0, err
	}
	if len(list.Items) > 0 {
		mark := fmt.Sprint(time.Now().UnixNano())
		iw.mu.Lock()
		iw.mark = mark
		iw.mu.Unlock()
		patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`, markAnnotation, mark)
		if err := c.Patch(ctx, &list.Items[0], client.RawPatch(types.MergePatchType, patch)); err != nil {
			return 0, "", 0, err
		}
		select {
		case <-iw.marked:
		case <-iw.done:
			return 0, "", 0, fmt.Errorf("the watch ended before it caught up: %v", iw.err)
		case <-ctx.Done():
			return 0, "", 0, fmt.Errorf("the watch did not catch up: %w", ctx.Err())
		}
	}
	iw.mu.Lock()
	defer iw.mu.Unlock()
	return iw.max, iw.worst, iw.events, iw.err
}
