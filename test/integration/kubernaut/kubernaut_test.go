// Package kubernaut measures what an unmodified Kubernaut gets from rrguard: GW-DEDUP-002 (five
// truly simultaneous signals of one fingerprint) through an emulation of today's Gateway (package
// test/gateway), against a real API server with rrguard installed, next to package creator as the
// drop-in. docs/kubernaut.md quotes the figures this test logs.
package kubernaut

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/test/gateway"
	"github.com/rrguard/rrguard/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.Options{Webhooks: true}, &env)) }

const (
	rounds  = 20
	signals = 5 // GW-DEDUP-002
)

// tally is one scenario's outcome over all rounds.
type tally struct {
	sent, rounds                              int
	rrs, counted, phantoms, swallowed, errors int
	maxRRsPerRound                            int
}

func (t tally) String() string {
	return fmt.Sprintf("%d signals in %d rounds: RRs stored %d (most in one round %d), signals counted in occurrenceCount %d, "+
		"409s taken as success %d, reported names that do not exist %d, errors %d",
		t.sent, t.rounds, t.rrs, t.maxRRsPerRound, t.counted, t.swallowed, t.phantoms, t.errors)
}

// storm fires one round's signals (n of one fingerprint) at once through send (the index picks
// the Gateway pod) and accounts for them.
func storm(ctx context.Context, t *testing.T, ns string, round, n int, send func(i int, fp string) (name string, swallowed bool, err error), sum *tally) {
	t.Helper()
	sum.sent += n
	sum.rounds++
	fp := testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, round))
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var reported []string
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			name, swallowed, err := send(i, fp)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Logf("signal error: %v", err)
				sum.errors++
				return
			}
			if swallowed {
				sum.swallowed++
			}
			reported = append(reported, name)
		}()
	}
	close(start)
	wg.Wait()

	var list v1alpha1.RemediationRequestList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{"spec.signalFingerprint": fp}); err != nil {
		t.Fatal(err)
	}
	sum.rrs += len(list.Items)
	sum.maxRRsPerRound = max(sum.maxRRsPerRound, len(list.Items))
	for i := range list.Items {
		sum.counted += int(creator.Signals(&list.Items[i]))
	}
	for _, name := range reported {
		var rr v1alpha1.RemediationRequest
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &rr); apierrors.IsNotFound(err) {
			sum.phantoms++
		} else if err != nil {
			t.Fatal(err)
		}
	}
}

func TestGWDedup002WithUnmodifiedKubernaut(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "kubernaut", 5*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	// A second namespace that rrguard does not judge, for today's Kubernaut without rrguard.
	offNS, err := env.UnjudgedNamespace(ctx, "kubernaut-off", ns)
	if err != nil {
		t.Fatal(err)
	}

	viaGateway := func(ns string, pods int, noLock bool) func(i int, fp string) (string, bool, error) {
		return func(i int, fp string) (string, bool, error) {
			o, err := gateway.Gateway{Client: env.Client, Namespace: ns, Pod: fmt.Sprintf("gateway-%d", i%pods), NoLock: noLock}.Signal(ctx, fp)
			return o.Name, o.Swallowed409, err
		}
	}
	// One Creator stands for one Gateway process: its concurrent repeats share status writes.
	cr, err := creator.New(env.Client, creator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	viaCreator := func(_ int, fp string) (string, bool, error) {
		res, err := cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp))
		return res.Name, false, err
	}
	scenarios := []struct {
		name string
		ns   string
		send func(int, string) (string, bool, error)
	}{
		{"Gateway today, one pod (its lock is re-entrant per pod)", ns, viaGateway(ns, 1, false)},
		{"Gateway today, five pods", ns, viaGateway(ns, signals, false)},
		{"package creator in place of Gateway's create", ns, viaCreator},
		{"Gateway's list-then-create without the Lease lock (as ApiFrontend and other creators do)", ns, viaGateway(ns, 1, true)},
		{"without rrguard: Gateway today, one pod", offNS, viaGateway(offNS, 1, false)},
		{"without rrguard: list-then-create without the lock", offNS, viaGateway(offNS, 1, true)},
	}
	results := make([]tally, len(scenarios))
	// Interleaved, so that each scenario sees the same machine load.
	for round := range rounds {
		for i, sc := range scenarios {
			storm(ctx, t, sc.ns, i*rounds+round, signals, sc.send, &results[i])
		}
	}
	for i, sc := range scenarios {
		r := results[i]
		t.Logf("%s: %s", sc.name, r)
		if sc.ns == offNS {
			continue
		}
		if r.maxRRsPerRound != 1 || r.errors != 0 {
			t.Errorf("%s: with rrguard installed every round must store exactly one RR: %s", sc.name, r)
		}
		// Every 409 Gateway swallows reports the random name it sent, which was never stored.
		if r.phantoms != r.swallowed {
			t.Errorf("%s: %d names reported that do not exist, %d swallowed 409s", sc.name, r.phantoms, r.swallowed)
		}
	}
	// The comparison means something only if GW-DEDUP-002 fails without rrguard.
	if base := results[5]; base.maxRRsPerRound < 2 {
		t.Errorf("without rrguard, list-then-create stored at most %d RR per round: GW-DEDUP-002 was not reproduced", base.maxRRsPerRound)
	}
	if c := results[2]; c.counted != rounds*signals || c.phantoms != 0 || c.swallowed != 0 {
		t.Errorf("creator: %s; want every signal counted and every reported name stored", c)
	}
}

// The alert storm of issue 14: 20 truly concurrent copies of one alert per rep, 5 reps, through
// today's Gateway and through the two changes docs/kubernaut.md proposes, with rrguard installed.
// Each row has its own client, counting its API requests.
func TestAlertStormThroughGateway(t *testing.T) {
	const reps, copies = 5, 20
	ctx, ns := env.TestNamespace(t, "kubernaut-storm", 5*time.Minute)
	stop, err := env.ServeRRGuard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	counted := func() (client.Client, *testenv.Requests) {
		var n testenv.Requests
		c, err := client.New(testenv.Counting(env.Config, &n), client.Options{Scheme: env.Client.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		return c, &n
	}
	viaGateway := func(g gateway.Gateway) func(int, string) (string, bool, error) {
		return func(_ int, fp string) (string, bool, error) {
			o, err := g.Signal(ctx, fp)
			return o.Name, o.Swallowed409, err
		}
	}
	type row struct {
		name     string
		send     func(int, string) (string, bool, error)
		requests *testenv.Requests
		exact    bool // the row must count every signal
	}
	var rows []row
	for _, g := range []struct {
		name string
		gw   gateway.Gateway
	}{
		{"Gateway today (Lease lock, one pod)", gateway.Gateway{}},
		{"+ details.name, no Lease lock (5 conflict tries, as today)", gateway.Gateway{NoLock: true, ReadDetails: true}},
		{"+ details.name, no Lease lock, 20 conflict tries", gateway.Gateway{NoLock: true, ReadDetails: true, ConflictTries: 20}},
	} {
		c, n := counted()
		g.gw.Client, g.gw.Namespace, g.gw.Pod = c, ns, "gateway-0"
		rows = append(rows, row{name: g.name, send: viaGateway(g.gw), requests: n})
	}
	c, n := counted()
	cr, err := creator.New(c, creator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rows = append(rows, row{name: "package creator (coalescing, one process)", requests: n, exact: true,
		send: func(_ int, fp string) (string, bool, error) {
			res, err := cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp))
			return res.Name, false, err
		}})
	results := make([]tally, len(rows))
	for rep := range reps {
		for i, r := range rows {
			storm(ctx, t, ns, 1000+i*reps+rep, copies, r.send, &results[i])
		}
	}
	perSignal := make([]float64, len(rows))
	for i, r := range rows {
		res := results[i]
		perSignal[i] = float64(r.requests.All.Load()) / float64(res.sent)
		t.Logf("%s: %s; API requests per signal %.1f", r.name, res, perSignal[i])
		if res.maxRRsPerRound != 1 {
			t.Errorf("%s: with rrguard every rep must store exactly one RR: %s", r.name, res)
		}
		if r.exact && (res.counted != res.sent || res.errors != 0 || res.phantoms != 0) {
			t.Errorf("%s: %s; want every signal counted under a name that exists", r.name, res)
		}
	}
	// The comparison means something only if today's Gateway loses signals in this storm, and
	// coalescing is the point only if it costs fewer requests than a conflict budget.
	if today := results[0]; today.counted >= today.sent {
		t.Errorf("today's Gateway counted %d of %d signals: the storm did not reproduce the loss", today.counted, today.sent)
	}
	if perSignal[3] >= perSignal[2] {
		t.Errorf("creator sent %.1f API requests per signal, the 20-try conflict budget %.1f", perSignal[3], perSignal[2])
	}
}
