package serve

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Every policy's state, read at each scrape from the policy sets that run in this process: where a
// built-in policy, which has no object to carry a status, reports whether it is enforced (and a
// cluster policy reports it besides its status). One process runs one replica; tests run several,
// and a policy counts as enforced when any of them enforces it.
var (
	policyEnforcedDesc = prometheus.NewDesc("rrguard_policy_enforced",
		"1 when the policy is enforced here (its watch synced and its marks seeded), 0 while it is not yet, by policy.", []string{"policy"}, nil)
	policyObjectsDesc = prometheus.NewDesc("rrguard_policy_objects",
		"Objects of the policy's target in its index, by policy.", []string{"policy"}, nil)
)

type policyCollector struct {
	mu   sync.Mutex
	sets map[*policySet]bool
}

var policyStates = &policyCollector{sets: map[*policySet]bool{}}

func init() { metrics.Registry.MustRegister(policyStates) }

func (c *policyCollector) add(ps *policySet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sets[ps] = true
}

func (c *policyCollector) remove(ps *policySet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.sets, ps)
}

// Describe implements prometheus.Collector.
func (c *policyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- policyEnforcedDesc
	ch <- policyObjectsDesc
}

// Collect implements prometheus.Collector.
func (c *policyCollector) Collect(ch chan<- prometheus.Metric) {
	type state struct {
		enforced bool
		objects  int
	}
	// The live policies are copied out first: an index's Len waits for a relist in progress,
	// and the set's lock must not be held meanwhile (the webhooks of every policy take it).
	type named struct {
		name string
		lp   *livePolicy
	}
	var live []named
	c.mu.Lock()
	for ps := range c.sets {
		ps.mu.RLock()
		for name, lp := range ps.live {
			live = append(live, named{name, lp})
		}
		ps.mu.RUnlock()
	}
	c.mu.Unlock()
	states := map[string]state{}
	for _, x := range live {
		s := states[x.name]
		s.enforced = s.enforced || x.lp.ready()
		s.objects = max(s.objects, x.lp.index.Len())
		states[x.name] = s
	}
	for name, s := range states {
		v := 0.0
		if s.enforced {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(policyEnforcedDesc, prometheus.GaugeValue, v, name)
		ch <- prometheus.MustNewConstMetric(policyObjectsDesc, prometheus.GaugeValue, float64(s.objects), name)
	}
}
