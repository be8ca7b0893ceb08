package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/test/testenv"
)

// queueDepth is how many PipelineRuns each key of a latency row queues.
const queueDepth = 10

// queueChains is how many keys' queues the latency row drives at once: each is a chain (end the
// one in flight, wait for the next release), so it bounds the load as the throughput rows'
// creators do.
const queueChains = 32

// queueLatencyRow is one latency row: for each release after a key's first, the time from the
// status write that ended the one in flight (its answer) to the watch showing the next released.
type queueLatencyRow struct {
	Keys     int           `json:"keys"`
	Releases int           `json:"releases"`
	P50, P99 time.Duration `json:"-"`
	Max      time.Duration `json:"-"`
	// Resumed is how often the test's watch had to resume (the API server ended it).
	Resumed int64 `json:"resumed"`
}

func (r queueLatencyRow) row(keys int) string {
	return fmt.Sprintf("| %d | %d | %s | %s | %s | %d |", keys, r.Releases, r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), r.Resumed)
}

// queueLatency queues queueDepth PipelineRuns on each of keys keys in ns (under the Queue
// sample), then drives every queue to its end: each released run is finished as Tekton would
// finish it, and the next one's release is timed from that write.
func queueLatency(ctx context.Context, env *testenv.Env, ns string, keys int) (queueLatencyRow, error) {
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Client.Scheme()})
	if err != nil {
		return queueLatencyRow{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// released[key] receives the name of each run of key as it is first seen released.
	released := map[string]chan string{}
	repo := func(k int) string { return fmt.Sprintf("lat-%d-%d", keys, k) }
	for k := range keys {
		released[repo(k)] = make(chan string, queueDepth)
	}
	var mu sync.Mutex
	seen := map[string]time.Time{}
	note := func(u *unstructured.Unstructured) {
		ch := released[u.GetLabels()["ci.example.com/repo"]]
		if !testenv.Released(u) || ch == nil {
			return
		}
		mu.Lock()
		_, dup := seen[u.GetName()]
		if !dup {
			seen[u.GetName()] = time.Now()
		}
		mu.Unlock()
		if !dup {
			ch <- u.GetName()
		}
	}
	rewatches, err := watchRuns(ctx, wc, ns, note)
	if err != nil {
		return queueLatencyRow{}, err
	}
	var failed error
	var once sync.Once
	fail := func(err error) { once.Do(func() { failed = err; cancel() }) }
	testenv.Parallel(keys*queueDepth, 32, func(i int) {
		if err := env.Client.Create(ctx, pipelineRun(ns, repo(i%keys))); err != nil {
			fail(err)
		}
	})
	if failed != nil {
		return queueLatencyRow{}, failed
	}
	var samples []time.Duration
	var smu sync.Mutex
	testenv.Parallel(keys, queueChains, func(k int) {
		ch := released[repo(k)]
		// ended: when the write that ended the one in flight was sent (an upper bound on the
		// wait: it commits a little later).
		var ended time.Time
		for j := range queueDepth {
			var name string
			select {
			case name = <-ch:
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Minute):
				fail(fmt.Errorf("key %s: run %d of %d never released (the watch resumed %d times)", repo(k), j+1, queueDepth, rewatches.Load()))
				return
			}
			if j > 0 {
				mu.Lock()
				at := seen[name]
				mu.Unlock()
				smu.Lock()
				samples = append(samples, at.Sub(ended))
				smu.Unlock()
			}
			ended = time.Now()
			if err := finishRun(ctx, env.Client, ns, name); err != nil {
				fail(err)
				return
			}
		}
	})
	if failed != nil {
		return queueLatencyRow{}, failed
	}
	slices.Sort(samples)
	r := queueLatencyRow{Keys: keys, Releases: len(samples), Resumed: rewatches.Load()}
	if len(samples) > 0 {
		r.P50, r.P99, r.Max = samples[len(samples)/2], samples[len(samples)*99/100], samples[len(samples)-1]
	}
	return r, nil
}

// watchRuns calls note for every PipelineRun of ns as the API server changes it, from now until
// ctx ends: a watch the API server ends (its timeout, a slow consumer) resumes from the last
// resource version seen, or, when that is too old, from a list (note sees every object again;
// what it saw before it ignores). It counts the resumptions.
func watchRuns(ctx context.Context, wc client.WithWatch, ns string, note func(*unstructured.Unstructured)) (*atomic.Int64, error) {
	list := func() *unstructured.UnstructuredList {
		return &unstructured.UnstructuredList{Object: map[string]any{"apiVersion": "tekton.dev/v1", "kind": "PipelineRunList"}}
	}
	start := func(rv string) (watch.Interface, error) {
		return wc.Watch(ctx, list(), client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}})
	}
	w, err := start("")
	if err != nil {
		return nil, err
	}
	var resumed atomic.Int64
	go func() {
		rv := ""
		for {
			for ev := range w.ResultChan() {
				if ev.Type == watch.Error {
					rv = "" // too old: list
					break
				}
				if u, ok := ev.Object.(*unstructured.Unstructured); ok {
					rv = u.GetResourceVersion()
					if ev.Type != watch.Deleted && ev.Type != watch.Bookmark {
						note(u)
					}
				}
			}
			w.Stop()
			for ctx.Err() == nil {
				if rv == "" {
					l := list()
					if err := wc.List(ctx, l, client.InNamespace(ns)); err != nil {
						time.Sleep(time.Second)
						continue
					}
					for i := range l.Items {
						note(&l.Items[i])
					}
					rv = l.GetResourceVersion()
				}
				if w, err = start(rv); err == nil {
					break
				}
				rv = ""
				time.Sleep(time.Second)
			}
			if ctx.Err() != nil {
				return
			}
			resumed.Add(1)
		}
	}()
	return &resumed, nil
}

// finishRun marks a PipelineRun succeeded, as Tekton does.
func finishRun(ctx context.Context, c client.Client, ns, name string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("tekton.dev/v1")
		u.SetKind("PipelineRun")
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
			return err
		}
		u.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Succeeded", "status": "True", "reason": "Succeeded"}}}
		return c.Status().Update(ctx, u)
	})
}
