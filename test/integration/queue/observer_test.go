package queue

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// observer replays every change to a namespace's objects of one target from the watch, in commit
// order: the most in flight at once, and the order in which they were first seen released.
type observer struct {
	tg       target
	mu       sync.Mutex
	objs     map[string]*unstructured.Unstructured
	maxRun   int
	released []string
	seen     map[string]bool
	// overlap: for each object released, the others that were in flight or being deleted then.
	overlap map[string][]string
	resumed int // times the watch resumed from a list
	done    chan struct{}
	err     error
}

// inFlight: released, not ended, not being deleted (what maxInFlight bounds; under Replace a
// cancelled run is in flight until it has ended, which waitForEnd waits for).
func (o *observer) inFlight(u *unstructured.Unstructured) bool {
	return isReleased(u) && !o.tg.ended(u) && u.GetDeletionTimestamp() == nil
}

func (tg target) observe(ctx context.Context, t *testing.T, ns string) *observer {
	t.Helper()
	listKind := tg.gvk.GroupVersion().WithKind(tg.gvk.Kind + "List")
	list := func(ctx context.Context) (*unstructured.UnstructuredList, error) {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(listKind)
		return l, env.Client.List(ctx, l, client.InNamespace(ns))
	}
	first, err := list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	watchFrom := func(rv string) (watch.Interface, error) {
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(listKind)
		return wc.Watch(ctx, l, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}})
	}
	w, err := watchFrom(first.GetResourceVersion())
	if err != nil {
		t.Fatal(err)
	}
	o := &observer{tg: tg, objs: map[string]*unstructured.Unstructured{}, seen: map[string]bool{}, overlap: map[string][]string{}, done: make(chan struct{})}
	for i := range first.Items {
		o.apply(watch.Modified, &first.Items[i])
	}
	var mu sync.Mutex // guards w, which a resume replaces
	t.Cleanup(func() { mu.Lock(); w.Stop(); mu.Unlock() })
	go func() {
		defer close(o.done)
		for {
			for ev := range w.ResultChan() {
				u, ok := ev.Object.(*unstructured.Unstructured)
				if !ok || ev.Type == watch.Error {
					if ev.Type == watch.Error {
						o.mu.Lock()
						o.err = fmt.Errorf("watch error: %v", apierrors.FromObject(ev.Object))
						o.mu.Unlock()
						return
					}
					continue
				}
				o.apply(ev.Type, u)
			}
			// The stream ended (an API server restart): resume from a list, as an informer
			// does (a new API server's watch cache starts after the last change seen). The
			// test waits for the resume before it changes anything (resumed).
			for ctx.Err() == nil {
				l, err := list(ctx)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				nw, err := watchFrom(l.GetResourceVersion())
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				o.relist(l.Items)
				mu.Lock()
				w = nw
				mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return o
}

// relist takes a list as the state after a watch ended.
func (o *observer) relist(items []unstructured.Unstructured) {
	o.mu.Lock()
	for name := range o.objs {
		if !slices.ContainsFunc(items, func(u unstructured.Unstructured) bool { return u.GetName() == name }) {
			delete(o.objs, name)
		}
	}
	o.resumed++
	o.mu.Unlock()
	for i := range items {
		o.apply(watch.Modified, &items[i])
	}
}

// awaitResumed waits until the watch has resumed n times.
func (o *observer) awaitResumed(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.resumed >= n, nil
	}); err != nil {
		t.Fatalf("the test's watch did not resume: %v", err)
	}
}

func (o *observer) apply(typ watch.EventType, u *unstructured.Unstructured) {
	o.mu.Lock()
	defer o.mu.Unlock()
	name := u.GetName()
	if typ == watch.Deleted {
		delete(o.objs, name)
	} else {
		o.objs[name] = u
	}
	if isReleased(u) && !o.seen[name] {
		o.seen[name] = true
		o.released = append(o.released, name)
		for _, x := range o.objs {
			if x.GetName() != name && (o.inFlight(x) || x.GetDeletionTimestamp() != nil) {
				o.overlap[name] = append(o.overlap[name], x.GetName())
			}
		}
	}
	n := 0
	for _, x := range o.objs {
		if o.inFlight(x) {
			n++
		}
	}
	o.maxRun = max(o.maxRun, n)
}

// check fails t if the watch broke or more than most were in flight at once.
func (o *observer) check(t *testing.T, most int) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.maxRun > most {
		t.Fatalf("%d %ss of one key in flight at once, want at most %d", o.maxRun, o.tg.gvk.Kind, most)
	}
}

// overlapping is the objects in flight or being deleted when name was released.
func (o *observer) overlapping(name string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.overlap[name])
}

func (o *observer) releasedOrder() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.released)
}

// most is the most that were in flight at once.
func (o *observer) most() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.maxRun
}
