// Command matrix is `make test-k8s`: every suite that talks to an API server, run against each
// Kubernetes release given (its kube-apiserver and etcd from `make testbin K8S_VERSION=...`), one
// release after another, then a table of release x suite: pass, FAIL or skip, with the reason of
// every skipped test and the name of every failed one. It exits 1 if anything failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Suites are the packages that start a control plane, by the name the table gives them. test/helm
// and test/helm3 are modules of their own.
var Suites = []suite{
	{"webhook", ".", "./test/integration/webhook"},
	{"crd", ".", "./test/integration/crd"},
	{"marks", ".", "./test/integration/marks"},
	{"storm", ".", "./test/integration/storm"},
	{"kubernaut", ".", "./test/integration/kubernaut"},
	{"policies", ".", "./test/integration/policies"},
	{"nokubernaut", ".", "./test/integration/nokubernaut"},
	{"jobs", ".", "./test/integration/jobs"},
	{"queue", ".", "./test/integration/queue"},
	{"tekton", ".", "./test/integration/tekton"},
	{"rollout", ".", "./test/integration/rollout"},
	{"deploy", ".", "./test/integration/deploy"},
	{"tls", ".", "./test/integration/tls"},
	{"metricsauth", ".", "./test/integration/metricsauth"},
	{"creator", ".", "./kubernaut/creator"},
	{"audit", ".", "./internal/audit"},
	{"cmd", ".", "./cmd/rrguard"},
	{"bench-smoke", ".", "./test/bench"},
	{"helm", "test/helm", "./..."},
	{"helm3", "test/helm3", "./..."},
}

type suite struct{ name, dir, pkg string }

// event is one line of `go test -json`.
type event struct {
	Action, Package, Test, Output string
	Elapsed                       float64
}

type result struct {
	status  string // pass, FAIL, skip, no tests
	skipped map[string]string
	failed  []string
	took    time.Duration
}

func main() {
	versions := flag.String("versions", "", "space-separated Kubernetes releases (as in make testbin)")
	root := flag.String("testbin-root", "", "folder holding k8s-<version>-r3 (make testbin's)")
	only := flag.String("suites", "", "comma-separated suite names (default: all)")
	timeout := flag.String("timeout", "30m", "go test -timeout per suite")
	flag.Parse()
	vs := strings.Fields(*versions)
	if len(vs) == 0 || *root == "" {
		fmt.Fprintln(os.Stderr, "matrix: -versions and -testbin-root are required")
		os.Exit(2)
	}
	suites := Suites
	if *only != "" {
		want := strings.Split(*only, ",")
		suites = slices.DeleteFunc(slices.Clone(Suites), func(s suite) bool { return !slices.Contains(want, s.name) })
		if len(suites) != len(want) {
			fmt.Fprintf(os.Stderr, "matrix: -suites %q: unknown suite among them\n", *only)
			os.Exit(2)
		}
	}
	results := map[string]map[string]result{}
	took := map[string]time.Duration{}
	failed := false
	for _, v := range vs {
		bin := filepath.Join(*root, "k8s-"+v+"-r3")
		for _, f := range []string{"kube-apiserver", "etcd"} {
			if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
				fmt.Fprintf(os.Stderr, "matrix: %s: run make testbin K8S_VERSION=%s first\n", err, v)
				os.Exit(2)
			}
		}
		results[v] = map[string]result{}
		start := time.Now()
		// One go test per module: its packages run side by side, as in make test.
		for _, dir := range []string{".", "test/helm", "test/helm3"} {
			var group []suite
			for _, s := range suites {
				if s.dir == dir {
					group = append(group, s)
				}
			}
			if len(group) == 0 {
				continue
			}
			fmt.Printf("=== kube-apiserver %s: %s\n", v, names(group))
			for name, r := range run(dir, group, bin, v, *timeout) {
				results[v][name] = r
				failed = failed || r.status == "FAIL"
			}
		}
		took[v] = time.Since(start)
		// Each release's column as soon as it is done: a long run stopped midway keeps its results.
		report(os.Stdout, []string{v}, suites, results, took)
	}
	report(os.Stdout, vs, suites, results, took)
	if failed {
		os.Exit(1)
	}
}

func names(ss []suite) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.name)
	}
	return strings.Join(out, " ")
}

// run runs the suites of one module against the binaries in bin, echoing the output of failing
// tests, and returns each suite's result.
func run(dir string, ss []suite, bin, version, timeout string) map[string]result {
	args := []string{"test", "-json", "-count=1", "-timeout", timeout}
	for _, s := range ss {
		args = append(args, s.pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "RRGUARD_TESTBIN="+bin, "RRGUARD_K8S_VERSION="+version)
	cmd.Stderr = os.Stderr
	results := map[string]result{}
	fail := func(err error) map[string]result {
		for _, s := range ss {
			results[s.name] = result{status: "FAIL", failed: []string{err.Error()}}
		}
		return results
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	byImport := parse(out, os.Stdout)
	waitErr := cmd.Wait()
	for _, s := range ss {
		// A suite is one package, or (./...) every package of its module.
		var merged *result
		for pkg, r := range byImport {
			if !strings.HasSuffix(pkg, strings.TrimPrefix(s.pkg, ".")) && s.pkg != "./..." {
				continue
			}
			if merged == nil {
				merged = r
				continue
			}
			merged.took += r.took
			merged.failed = append(merged.failed, r.failed...)
			for k, v := range r.skipped {
				merged.skipped[k] = v
			}
			if r.status == "FAIL" {
				merged.status = "FAIL"
			}
		}
		if merged == nil {
			merged = &result{status: "FAIL", failed: []string{"no result (build failure?)"}}
		}
		results[s.name] = *merged
	}
	if waitErr != nil {
		failedAny := false
		for _, r := range results {
			failedAny = failedAny || r.status == "FAIL"
		}
		if !failedAny {
			return fail(fmt.Errorf("go test: %w", waitErr))
		}
	}
	return results
}

// parse reads go test -json events, per package; it writes the output of each test that fails,
// and of the packages that fail outside a test, to echo.
func parse(in io.Reader, echo io.Writer) map[string]*result {
	rs := map[string]*result{}
	get := func(pkg string) *result {
		if rs[pkg] == nil {
			rs[pkg] = &result{skipped: map[string]string{}}
		}
		return rs[pkg]
	}
	outputs := map[string][]string{}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Package == "" {
			continue
		}
		r := get(e.Package)
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			outputs[key] = append(outputs[key], e.Output)
		case "skip":
			if e.Test == "" {
				r.status = "no tests"
				continue
			}
			r.skipped[e.Test] = skipReason(outputs[key])
		case "fail":
			if e.Test != "" {
				r.failed = append(r.failed, e.Test)
			} else {
				r.status = "FAIL"
				r.took = time.Duration(e.Elapsed * float64(time.Second))
			}
			for _, l := range outputs[key] {
				fmt.Fprint(echo, l)
			}
		case "pass":
			if e.Test == "" {
				r.status = "pass"
				if len(r.skipped) > 0 {
					r.status = "pass, skips"
				}
				r.took = time.Duration(e.Elapsed * float64(time.Second))
			}
		}
	}
	// Packages without test files are not suites.
	for pkg, r := range rs {
		if r.status == "no tests" || r.status == "" {
			delete(rs, pkg)
		}
	}
	return rs
}

// skipReason is what t.Skip printed: the test's output minus go test's own RUN/SKIP lines.
func skipReason(lines []string) string {
	var out []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return "(no reason given)"
	}
	return strings.Join(out, " ")
}

func report(w io.Writer, vs []string, suites []suite, results map[string]map[string]result, took map[string]time.Duration) {
	fmt.Fprintf(w, "\n| suite | %s |\n|---|%s\n", strings.Join(vs, " | "), strings.Repeat("---|", len(vs)))
	for _, s := range suites {
		cells := make([]string, len(vs))
		for i, v := range vs {
			r := results[v][s.name]
			cells[i] = fmt.Sprintf("%s (%s)", r.status, r.took.Round(time.Second))
		}
		fmt.Fprintf(w, "| %s | %s |\n", s.name, strings.Join(cells, " | "))
	}
	cells := make([]string, len(vs))
	for i, v := range vs {
		cells[i] = took[v].Round(time.Second).String()
	}
	fmt.Fprintf(w, "| all | %s |\n", strings.Join(cells, " | "))
	for _, v := range vs {
		for _, s := range suites {
			r := results[v][s.name]
			names := make([]string, 0, len(r.skipped))
			for t := range r.skipped {
				names = append(names, t)
			}
			slices.Sort(names)
			for _, t := range names {
				fmt.Fprintf(w, "skip %s %s %s: %s\n", v, s.name, t, r.skipped[t])
			}
			for _, t := range r.failed {
				fmt.Fprintf(w, "FAIL %s %s %s\n", v, s.name, t)
			}
		}
	}
}
