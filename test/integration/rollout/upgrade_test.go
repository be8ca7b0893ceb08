package rollout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
	"github.com/rrguard/rrguard/webhook/serve"
)

// lastRelease is the release the RR is upgraded from in TestRollingUpgradeFromTheLastRelease:
// main when the issue that made the RR one entry of the policy set was filed, the last commit
// whose server built the RR's releaser, index and namer by hand beside the policy set.
const lastRelease = "9e901f800917760ba2a9cbf3df7b864f2bbe56a1"

// A rolling upgrade from the last release, as a Deployment does it: three replicas of that
// release (its binary, built from its commit, each its own process) behind the stand-in for the
// Service, replaced one at a time by this build's, while creators go on. Each creator has its own
// fingerprint and loops: create (must succeed), a repeat (must be the 409 naming the first),
// complete, delete. Old and new replicas serve side by side, so names and marks written by one
// are read by the other: no name may be issued twice, every number above the last, and no
// create may fail.
//
// Twice: with the tests' 1 ms hold, where every create is decided by consistent reads and a
// deleted RR is gone at once (its number then held by the mark alone), and with timings under
// which the index decides (testenv.IndexTrusted), as in production.
func TestRollingUpgradeFromTheLastRelease(t *testing.T) {
	old := buildRelease(t, lastRelease)
	kubeconfig := env.Kubeconfig(t)
	t.Run("consistent reads", func(t *testing.T) {
		upgrade(t, old, kubeconfig, func(*serve.Options) {}, "--consistent-list-only")
	})
	t.Run("index decides", func(t *testing.T) {
		o := env.ServeOptions()
		testenv.IndexTrusted(&o)
		upgrade(t, old, kubeconfig, testenv.IndexTrusted,
			"--request-timeout="+o.RequestTimeout.String(), "--index-max-lag="+o.IndexMaxLag.String(), "--release-min-age="+o.ReleaseMinAge.String())
	})
}

// upgrade runs one rolling upgrade: the last release's replicas with oldFlags, this build's
// adjusted by timings to match.
func upgrade(t *testing.T, old, kubeconfig string, timings func(*serve.Options), oldFlags ...string) {
	ctx, ns := env.TestNamespace(t, "upgrade", 5*time.Minute)
	var addrs []string
	var stops []func() error
	for range 3 {
		a, s := startRelease(ctx, t, old, kubeconfig, oldFlags...)
		addrs, stops = append(addrs, a), append(stops, s)
	}
	defer func() {
		for _, s := range stops {
			_ = s()
		}
	}()
	o := env.ServeOptions()
	proxy, err := testenv.NewProxy(net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), addrs...)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	const creators = 8
	names := make([][]string, creators)
	var failures []string
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf(format, args...))
	}
	// phase counts the creates made while only old replicas served (0), during the rollout (1),
	// and once every replica was new (2).
	var phase atomic.Int32
	var created [3]atomic.Int64
	var staleRetries atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	stopCreators := sync.OnceFunc(func() { close(done); wg.Wait() })
	defer stopCreators()
	for i := range creators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fp := testenv.Fingerprint(fmt.Sprintf("%s/%d", ns, i))
			previous := ""
			for {
				select {
				case <-done:
					return
				default:
				}
				p := phase.Load()
				rr := testenv.NewRR(ns, fp)
				if err := createAfter(ctx, rr, previous, &staleRetries); err != nil {
					fail("create of creator %d: %v", i, err)
					return
				}
				previous = rr.Name
				names[i] = append(names[i], rr.Name)
				created[p].Add(1)
				if err := env.Client.Create(ctx, testenv.NewRR(ns, fp)); !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != rr.Name {
					fail("a repeat while %s is in flight: %v (want 409 naming it)", rr.Name, err)
					return
				}
				patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"overallPhase":"Completed"}}`))
				if err := env.Client.Status().Patch(ctx, rr, patch); err != nil {
					fail("completing %s: %v", rr.Name, err)
					return
				}
				if err := env.Client.Delete(ctx, rr); err != nil && !apierrors.IsNotFound(err) {
					fail("deleting %s: %v", rr.Name, err)
					return
				}
			}
		}()
	}

	time.Sleep(time.Second)
	phase.Store(1)
	for i := range stops {
		r, stop, err := env.ServeReplica(ctx, env.Config, testenv.Aside, timings, func(o *serve.Options) { o.ShutdownDelay = 2 * time.Second })
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = r.WebhookAddr()
		proxy.SetBackends(addrs...)
		if err := stops[i](); err != nil {
			t.Errorf("replica %d of the last release stopped with %v", i, err)
		}
		stops[i] = stop
		time.Sleep(500 * time.Millisecond)
	}
	phase.Store(2)
	time.Sleep(time.Second)
	stopCreators()

	if len(failures) > 0 {
		t.Fatalf("%d failures through the upgrade, the first: %s", len(failures), failures[0])
	}
	for p, what := range []string{"before the rollout", "during it", "after it"} {
		if created[p].Load() == 0 {
			t.Fatalf("no create %s: the storm did not span the upgrade (%d, %d, %d)", what, created[0].Load(), created[1].Load(), created[2].Load())
		}
	}
	total := 0
	for i, issued := range names {
		last := int64(0)
		for j, name := range issued {
			_, n, ok := rules.ParseName(rules.RRNamePrefix, name)
			if !ok || n <= last {
				t.Fatalf("creator %d was given %s after number %d (its create %d of %d): a name reissued or out of order", i, name, last, j+1, len(issued))
			}
			last = n
		}
		total += len(issued)
	}
	t.Logf("%d creates (%d before the rollout, %d during, %d after), each followed by its 409 repeat, completion and deletion; every name new; %d retries after a 409 naming the RR just completed",
		total, created[0].Load(), created[1].Load(), created[2].Load(), staleRetries.Load())
}

// staleRetryLimit bounds a creator's retries after a 409 naming the RR it has just completed
// (the index lags the completion by milliseconds, at most its maximum lag, 4 s here).
const (
	staleRetryLimit = 200
	staleRetryPause = 20 * time.Millisecond
)

// createAfter creates rr as a creator following the contract does: a 409 that names the RR it has
// itself just completed (previous: an index that has not seen the completion yet refuses, which
// stores nothing, docs/design.md "Reads") is retried; any other failure is returned.
func createAfter(ctx context.Context, rr client.Object, previous string, retries *atomic.Int64) error {
	for range staleRetryLimit {
		err := env.Client.Create(ctx, rr)
		if err == nil || previous == "" || !apierrors.IsAlreadyExists(err) || testenv.DetailsName(err) != previous {
			return err
		}
		retries.Add(1)
		time.Sleep(staleRetryPause)
	}
	return fmt.Errorf("still refused naming %s, completed, after %d tries", previous, staleRetryLimit)
}

// buildRelease builds rrguard's binary at commit, once per machine (in the user's cache, beside the
// test binaries of the API server), from the commit's own tree: git archive, go build.
func buildRelease(t *testing.T, commit string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(cache, "rrguard", "releases", commit[:12], "rrguard")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if exec.Command("git", "-C", env.Root, "cat-file", "-e", commit+"^{commit}").Run() != nil {
		// A shallow clone lacks it: fetch it from where the clone came from.
		if out, err := exec.Command("git", "-C", env.Root, "fetch", "--quiet", "origin", commit).CombinedOutput(); err != nil {
			t.Fatalf("the last release's commit %s is not in this checkout and could not be fetched: %v %s", commit, err, out)
		}
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", env.Root, commit, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v %s", commit, err, out)
	}
	// Built beside its final path and renamed into it: two test binaries building at once each
	// write their own file.
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	partial, err := os.CreateTemp(filepath.Dir(bin), "rrguard-*.partial")
	if err != nil {
		t.Fatal(err)
	}
	partial.Close()
	build := exec.Command("go", "build", "-o", partial.Name(), "./cmd/rrguard")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		os.Remove(partial.Name())
		t.Fatalf("building the release at %s: %v %s", commit, err, out)
	}
	if err := os.Rename(partial.Name(), bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// releaseStopLimit bounds a stopping replica of the last release: its 2 s shutdown delay, then
// its graceful stop.
const releaseStopLimit = 30 * time.Second

// startRelease runs a replica of the release binary bin as a process serving where the test's
// in-process replicas would (the same certificate, marks namespace and test timings: hold 1 ms,
// no periodic sweep; flags added), and returns its webhook address once it is ready; stop sends SIGTERM, as the
// kubelet does, and waits for it to exit.
func startRelease(ctx context.Context, t *testing.T, bin, kubeconfig string, flags ...string) (addr string, stop func() error) {
	t.Helper()
	o := env.ServeOptions()
	addr, probe := testenv.FreeAddr(t), testenv.FreeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	logPath := filepath.Join(t.TempDir(), "rrguard.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close() // the process has its own descriptor
	// Later flags win: flags override the hold.
	cmd := exec.Command(bin, append([]string{"--webhook-host=" + host, "--webhook-port=" + port, "--cert-dir=" + o.CertDir,
		"--metrics-bind-address=0", "--health-probe-bind-address=" + probe, "--shutdown-delay=2s",
		"--marks-namespace=" + o.MarksNamespace, "--release-min-age=" + o.ReleaseMinAge.String(), "--release-every=" + o.ReleaseEvery.String()}, flags...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = log, log
	// It dies with the test binary, however that ends (a -timeout, a kill).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case stopErr = <-exited:
			case <-time.After(releaseStopLimit):
				_ = cmd.Process.Kill()
				stopErr = fmt.Errorf("did not stop within %s of SIGTERM: %v", releaseStopLimit, <-exited)
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		select {
		case err := <-exited:
			exited <- err
			return false, errors.New("exited")
		default:
		}
		resp, err := http.Get("http://" + probe + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		out, _ := os.ReadFile(logPath)
		t.Fatalf("the last release's replica was not ready: %v (%s)\n%s", err, cmd.ProcessState, out)
	}
	return addr, stop
}
