// Package storm sends signals the way N Gateway replicas would, through package creator, and
// checks the cluster afterwards: per fingerprint at most one RR in flight, and every signal
// accounted for in status.deduplication.occurrenceCount.
package storm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/localcp"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/kubernaut/creator"
)

// Options size a storm.
type Options struct {
	Namespace    string
	Fingerprints []string
	Signals      int // spread round-robin over Fingerprints
	// Duration, when set, keeps every worker sending until it has passed; Signals is then ignored.
	Duration time.Duration
	// Enough, with Duration, keeps the storm going past Duration until it reports true (checked
	// every 100 ms, for at most 6 x Duration): a test whose storm must reach a state (numbers
	// above 2, say) takes longer on a slow machine instead of failing.
	Enough  func() bool
	Workers int
	// Processes is how many creator processes the workers are spread over, each with a Creator
	// of its own (1 when unset): repeats coalesce within a process and contend across them.
	Processes int
	Creator   creator.Options
	// Progress, when set, is called about every second with the signals landed so far.
	Progress func(done, total int)
	// OnLanded, when set, is called once for each signal with how many have landed (or failed)
	// so far, counting it: tests inject faults at a point of the storm, not at a time.
	OnLanded func(done int)
}

// Summary is what a storm did, as its creators saw it.
type Summary struct {
	Sent      int
	Created   int
	Repeats   int
	Ambiguous int
	Attempts  int
	// Requests is the API requests sent for the signals that landed: each signal's creates plus
	// its share of its batch's reads and writes.
	Requests float64
	Errors   map[string]int // by kind, for signals that did not land
	// FirstError is the first message of each kind in Errors.
	FirstError map[string]string
	PerFP      map[string]int // signals sent per fingerprint
	Elapsed    time.Duration
}

// Lost is how many signals landed nowhere.
func (s Summary) Lost() int { return s.Sent - s.Created - s.Repeats }

// Run sends the signals and waits for all of them.
func Run(ctx context.Context, c client.Client, o Options) Summary {
	s := Summary{Errors: map[string]int{}, FirstError: map[string]string{}, PerFP: map[string]int{}}
	creators := make([]*creator.Creator, max(o.Processes, 1))
	for i := range creators {
		cr, err := creator.New(c, o.Creator)
		if err != nil {
			s.Errors["invalid-options"], s.FirstError["invalid-options"] = 1, err.Error()
			return s
		}
		creators[i] = cr
	}
	work := make(chan int)
	var mu sync.Mutex
	var done atomic.Int64
	start := time.Now()
	stopProgress := make(chan struct{})
	if o.Progress != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					o.Progress(int(done.Load()), o.Signals)
				}
			}
		}()
	}
	var wg sync.WaitGroup
	for w := range o.Workers {
		cr := creators[w%len(creators)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fp := o.Fingerprints[i%len(o.Fingerprints)]
				res, err := cr.CreateOrRecord(ctx, localcp.NewRR(o.Namespace, fp))
				n := done.Add(1)
				if o.OnLanded != nil {
					o.OnLanded(int(n))
				}
				mu.Lock()
				s.Sent++
				s.PerFP[fp]++
				s.Attempts += res.Attempts
				s.Requests += float64(res.Requests)
				if res.Batch > 0 {
					s.Requests += float64(res.BatchRequests) / float64(res.Batch)
				}
				if res.Ambiguous {
					s.Ambiguous++
				}
				switch {
				case err != nil:
					k := kind(err)
					s.Errors[k]++
					if s.FirstError[k] == "" {
						s.FirstError[k] = err.Error()
					}
				case res.New:
					s.Created++
				default:
					s.Repeats++
				}
				mu.Unlock()
			}
		}()
	}
	if o.Duration > 0 {
		deadline := time.NewTimer(o.Duration)
		limit := time.NewTimer(6 * o.Duration)
		var check <-chan time.Time
	send:
		for i := 0; ; i++ {
			select {
			case work <- i:
			case <-deadline.C:
				if o.Enough == nil || o.Enough() {
					break send
				}
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				check = tick.C
			case <-check:
				if o.Enough() {
					break send
				}
			case <-limit.C:
				break send
			case <-ctx.Done():
				break send
			}
		}
		deadline.Stop()
		limit.Stop()
	} else {
		for i := range o.Signals {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	close(stopProgress)
	s.Elapsed = time.Since(start)
	return s
}

func kind(err error) string {
	var st apierrors.APIStatus
	switch {
	case errors.Is(err, creator.ErrGaveUp):
		return "gave-up"
	case errors.As(err, &st):
		return string(st.Status().Reason)
	default:
		return "other"
	}
}

// Consistency is the cluster after a storm.
type Consistency struct {
	RRs              int
	InFlightMax      int            // the most RRs of one fingerprint in flight at once
	Duplicates       int            // RRs beyond one in flight per fingerprint
	Counted          int            // signals held, summed over RRs (creator.Signals)
	CountPerFP       map[string]int // signals held per fingerprint
	RRsPerFP         map[string]int
	MissingFP        []string // fingerprints sent that hold no RR
	NotDeduplicating int      // RRs with no status.deduplication (each holds its creating signal)
}

// Check reads the namespace consistently and accounts for the storm's signals.
func Check(ctx context.Context, c client.Client, ns string, sent map[string]int) (Consistency, error) {
	var list v1alpha1.RemediationRequestList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return Consistency{}, err
	}
	k := Consistency{RRs: len(list.Items), CountPerFP: map[string]int{}, RRsPerFP: map[string]int{}}
	inflight := map[string]int{}
	now := time.Now()
	for i := range list.Items {
		rr := &list.Items[i]
		fp := rr.Spec.SignalFingerprint
		k.RRsPerFP[fp]++
		if kubernaut.InFlight(rr, now) {
			inflight[fp]++
		}
		k.CountPerFP[fp] += int(creator.Signals(rr))
		k.Counted += int(creator.Signals(rr))
		if rr.Status.Deduplication == nil {
			k.NotDeduplicating++
		}
	}
	for _, n := range inflight {
		k.InFlightMax = max(k.InFlightMax, n)
		k.Duplicates += n - 1
	}
	for fp := range sent {
		if k.RRsPerFP[fp] == 0 {
			k.MissingFP = append(k.MissingFP, fp)
		}
	}
	sort.Strings(k.MissingFP)
	return k, nil
}

// String is the storm summary a person reads.
func (s Summary) String() string {
	return fmt.Sprintf("signals sent %d in %s: RRs created %d, repeats recorded %d, lost %d, ambiguous writes %d, creates sent %d, requests per signal %.2f, errors %v %v",
		s.Sent, s.Elapsed.Round(time.Millisecond), s.Created, s.Repeats, s.Lost(), s.Ambiguous, s.Attempts, s.Requests/float64(max(s.Sent, 1)), s.Errors, s.FirstError)
}

// String is the consistency check a person reads.
func (k Consistency) String() string {
	return fmt.Sprintf("RRs %d, most in flight for one fingerprint %d, duplicates %d, signals held %d, fingerprints without RR %d, RRs without count %d",
		k.RRs, k.InFlightMax, k.Duplicates, k.Counted, len(k.MissingFP), k.NotDeduplicating)
}
