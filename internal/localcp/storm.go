package localcp

import (
	"context"
	"errors"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Outcome is what one create of a storm got back.
type Outcome struct {
	Fingerprint string
	Stored      string // the name the API server stored, when the create succeeded
	DuplicateOf string // details.name of an AlreadyExists answer
	Err         error  // any other error, or an AlreadyExists without details.name
}

// Storm creates perFP RRs for each fingerprint in ns, all released at once by a barrier, with
// no request ahead of the others (GW-DEDUP-002 as first written), and returns every outcome.
func Storm(ctx context.Context, c client.Client, ns string, fps []string, perFP int) []Outcome {
	out := make([]Outcome, len(fps)*perFP)
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	for i := range out {
		fp := fps[i%len(fps)]
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			rr := NewRR(ns, fp)
			ready.Done()
			<-start
			out[i] = outcomeOf(fp, c.Create(ctx, rr), rr.Name)
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	return out
}

func outcomeOf(fp string, err error, name string) Outcome {
	o := Outcome{Fingerprint: fp}
	var st apierrors.APIStatus
	switch {
	case err == nil:
		o.Stored = name
	case apierrors.IsAlreadyExists(err) && errors.As(err, &st) && st.Status().Details != nil && st.Status().Details.Name != "":
		o.DuplicateOf = st.Status().Details.Name
	default:
		o.Err = err
	}
	return o
}
