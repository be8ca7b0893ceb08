// Package alerts tests config/prometheus/rules.yaml with Prometheus's own packages: every rule
// parsed and validated as Prometheus loads it, and every alert evaluated on synthetic series,
// firing on the series it is for and staying quiet on the ones it must ignore; and the Grafana
// dashboard in config/grafana: every query parsed, referring only to metrics that exist. It is a
// module of its own so that Prometheus's dependencies stay out of rrguard's.
package alerts

import (
	"context"
	"encoding/json"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"
)

// groups reads the rule groups out of the PrometheusRule in config/prometheus and parses them as
// Prometheus does (strict fields, every expression compiled).
func groups(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "config", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cr struct {
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &cr); err != nil {
		t.Fatal(err)
	}
	spec, err := yaml.Marshal(cr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	rgs, errs := rulefmt.Parse(spec, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
	if len(errs) > 0 {
		t.Fatalf("config/prometheus/rules.yaml does not load in Prometheus: %v", errs)
	}
	return rgs
}

// fires evaluates an alerting rule every minute over the series loaded (promqltest's "load"
// syntax, from time 0) for the given span, and returns the labels of each alert firing at the end.
func fires(t *testing.T, r rulefmt.Rule, load string, span time.Duration) []labels.Labels {
	t.Helper()
	storage := promqltest.LoadedStorage(t, load)
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr)
	if err != nil {
		t.Fatal(err)
	}
	ar := rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
		labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", false, slog.Default())
	query := rules.EngineQueryFunc(engine, storage)
	for ts := time.Duration(0); ts <= span; ts += time.Minute {
		if _, err := ar.Eval(context.Background(), 0, time.Unix(0, 0).Add(ts), query, nil, 0); err != nil {
			t.Fatalf("%s at %s: %v", r.Alert, ts, err)
		}
	}
	var firing []labels.Labels
	for _, a := range ar.ActiveAlerts() {
		if a.State == rules.StateFiring {
			firing = append(firing, a.Labels)
		}
	}
	return firing
}

// cases: for each alert, series it must fire on and series it must ignore, over 30 minutes; names
// is the label an alert about one policy (or one webhook) carries, and the value it must have.
var cases = map[string]struct {
	fire, quiet string
	names       [2]string
}{
	"RRGuardAdmissionLatencyHigh": {
		// Every decision between 1 and 2.5 s.
		fire: `load 1m
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="tekton",le="1"} 0+0x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="tekton",le="2.5"} 0+60x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="tekton",le="+Inf"} 0+60x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="remediationrequests",le="0.005"} 0+6000x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="remediationrequests",le="1"} 0+6000x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="remediationrequests",le="2.5"} 0+6000x30
			rrguard_admission_duration_seconds_bucket{webhook="name",policy="remediationrequests",le="+Inf"} 0+6000x30`,
		names: [2]string{"policy", "tekton"},
		quiet: `load 1m
			rrguard_admission_duration_seconds_bucket{webhook="name",le="0.005"} 0+60x30
			rrguard_admission_duration_seconds_bucket{webhook="name",le="1"} 0+60x30
			rrguard_admission_duration_seconds_bucket{webhook="name",le="2.5"} 0+60x30
			rrguard_admission_duration_seconds_bucket{webhook="name",le="+Inf"} 0+60x30`,
	},
	"RRGuardAdmissionErrors": {
		// One policy's errors, drowned in another's successes across all creates: still its alert.
		fire: `load 1m
			rrguard_admission_decisions_total{webhook="name",decision="error",policy="tekton"} 0+10x30
			rrguard_admission_decisions_total{webhook="name",decision="created",policy="tekton"} 0+100x30
			rrguard_admission_decisions_total{webhook="name",decision="created",policy="remediationrequests"} 0+100000x30`,
		names: [2]string{"policy", "tekton"},
		// Errors of the other webhook are not the naming webhook's error ratio.
		quiet: `load 1m
			rrguard_admission_decisions_total{webhook="check",decision="error"} 0+50x30
			rrguard_admission_decisions_total{webhook="name",decision="created"} 0+100x30`,
	},
	"RRGuardDown": {
		fire: `load 1m
			up{job="rrguard-controller-manager-metrics-service",instance="a"} 1x30
			up{job="rrguard-controller-manager-metrics-service",instance="b"} 0x30`,
		quiet: `load 1m
			up{job="rrguard-controller-manager-metrics-service",instance="a"} 1x30
			up{job="rrguard-controller-manager-metrics-service",instance="b"} 1x30
			up{job="rrguard-controller-manager-metrics-service",instance="c"} 0x30`,
	},
	"RRGuardDeletionsHeld": {
		fire: `load 1m
			rrguard_deletion_held_oldest_seconds{instance="a",policy="remediationrequests"} 400x30
			rrguard_deletion_held_oldest_seconds{instance="a",policy="tekton"} 20x30`,
		names: [2]string{"policy", "remediationrequests"},
		quiet: `load 1m
			rrguard_deletion_held_oldest_seconds{instance="a"} 20x30`,
	},
	"RRGuardReleaseBacklog": {
		fire: `load 1m
			rrguard_release_backlog{instance="a",policy="tekton"} 0x5 3x30
			rrguard_release_backlog{instance="b",policy="tekton"} 0x35`,
		names: [2]string{"policy", "tekton"},
		// An upgrade's backlog going down round by round clears well within the 15 minutes.
		quiet: `load 1m
			rrguard_release_backlog{instance="a"} 900 600 300 0x30`,
	},
	"RRGuardQueueStalled": {
		fire: `load 1m
			rrguard_queue_stalled_keys{instance="a",policy="tekton-queue"} 0x5 1x30
			rrguard_queue_stalled_keys{instance="b",policy="jobs"} 0x35`,
		names: [2]string{"policy", "tekton-queue"},
		// A key that stalls for a minute and moves again is no alert.
		quiet: `load 1m
			rrguard_queue_stalled_keys{instance="a",policy="tekton-queue"} 0x5 1 0x30`,
	},
	"RRGuardUnreachableFromAPIServer": {
		fire: `load 1m
			apiserver_admission_webhook_rejection_count{name="tekton.policies.rrguard.kubernaut.ai",type="admit",operation="CREATE",error_type="calling_webhook_error",rejection_code="0"} 0+3x30`,
		names: [2]string{"name", "tekton.policies.rrguard.kubernaut.ai"},
		// rrguard's own 409s are rejections without an error; another webhook's failures are not rrguard's.
		quiet: `load 1m
			apiserver_admission_webhook_rejection_count{name="name.rrguard.kubernaut.ai",type="admit",operation="CREATE",error_type="no_error",rejection_code="409"} 0+100x30
			apiserver_admission_webhook_rejection_count{name="other.example.com",type="admit",operation="CREATE",error_type="calling_webhook_error",rejection_code="0"} 0+3x30`,
	},
	"RRGuardSlowAtAPIServer": {
		fire: `load 1m
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="2.5"} 0+0x30
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="10"} 0+60x30
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="+Inf"} 0+60x30`,
		names: [2]string{"name", "name.rrguard.kubernaut.ai"},
		quiet: `load 1m
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="0.025"} 0+60x30
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="2.5"} 0+60x30
			apiserver_admission_webhook_admission_duration_seconds_bucket{name="name.rrguard.kubernaut.ai",le="+Inf"} 0+60x30`,
	},
}

func TestEveryAlertFiresOnlyWhenItShould(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range groups(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			c, ok := cases[r.Alert]
			if !ok {
				t.Errorf("alert %s has no test case: add series it fires on and series it ignores", r.Alert)
				continue
			}
			t.Run(r.Alert, func(t *testing.T) {
				firing := fires(t, r, c.fire, 30*time.Minute)
				if len(firing) == 0 {
					t.Errorf("did not fire on the series it is for")
				}
				if c.names[0] != "" && (len(firing) != 1 || firing[0].Get(c.names[0]) != c.names[1]) {
					t.Errorf("fired as %v; want one alert with %s=%q (the policy or webhook it is about)", firing, c.names[0], c.names[1])
				}
				if quiet := fires(t, r, c.quiet, 30*time.Minute); len(quiet) > 0 {
					t.Errorf("fired on the series it must ignore: %v", quiet)
				}
			})
		}
	}
	for name := range cases {
		if !seen[name] {
			t.Errorf("test case for %s, which config/prometheus/rules.yaml no longer has", name)
		}
	}
}

// metricNames are the metrics a query refers to.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q does not parse: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

// exported is every metric a query may use: rrguard's own, as its source declares them
// (`Name: "rrguard_..."`, with a histogram's series), the API server's webhook metrics, and up.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	ok := map[string]bool{
		"up": true,
		"apiserver_admission_webhook_admission_duration_seconds_bucket": true,
		"apiserver_admission_webhook_rejection_count":                   true,
	}
	declared := regexp.MustCompile(`Name:\s+"(rrguard_[a-z_]+)"`)
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && path != root && (d.Name() == "test" || d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")):
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go"):
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range declared.FindAllStringSubmatch(string(b), -1) {
			for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
				ok[m[1]+suffix] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ok) < 3+4*8 {
		t.Fatalf("found %d metric names in rrguard's source; the declaration pattern no longer matches", len(ok))
	}
	return ok
}

// The dashboard shipped for Grafana's sidecar: every panel's queries parse, refer only to metrics
// that exist, and together cover what an SRE needs to see.
func TestDashboardQueries(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "config", "grafana", "rrguard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	ok := exported(t)
	used := map[string]bool{}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, n := range metricNames(t, q.Expr) {
				used[n] = true
				if !ok[n] {
					t.Errorf("panel %q: %s is not a metric rrguard or the API server exports", p.Title, n)
				}
			}
		}
	}
	for _, need := range []string{
		"rrguard_admission_decisions_total", "rrguard_admission_duration_seconds_bucket",
		"apiserver_admission_webhook_admission_duration_seconds_bucket", "rrguard_decision_api_reads_count",
		"rrguard_consistent_list_fallbacks_total", "up", "rrguard_deletions_held",
	} {
		if !used[need] {
			t.Errorf("no panel shows %s", need)
		}
	}
	// The alerts obey the same rule.
	for _, g := range groups(t).Groups {
		for _, r := range g.Rules {
			for _, n := range metricNames(t, r.Expr) {
				if !ok[n] {
					t.Errorf("alert %s: %s is not a metric rrguard or the API server exports", r.Alert, n)
				}
			}
		}
	}
}
