// Command rrguard-local is `make run` and `make demo`: a local control plane (the kube-apiserver
// and etcd of `make testbin`) with the CRD and config/webhook installed, and rrguard serving them
// in the foreground with certificates from package certs. Ctrl-C stops everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/certs"
	"github.com/rrguard/rrguard/internal/localcp"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/webhook/serve"
)

func main() {
	demo := flag.Bool("demo", false, "fire the GW-DEDUP-002 storm (5, then 100 simultaneous creates of one fingerprint), report, and exit")
	port := flag.Int("webhook-port", 9443, "local port rrguard serves the webhooks on")
	metrics := flag.String("metrics-bind-address", "127.0.0.1:8080", "Prometheus metrics address")
	probes := flag.String("health-probe-bind-address", "127.0.0.1:8081", "/healthz and /readyz address")
	ns := flag.String("namespace", "kubernaut-system", "namespace to create for RemediationRequests")
	flag.Parse()
	ctrl.SetLogger(zap.New())
	if err := run(*demo, *port, *metrics, *probes, *ns); err != nil {
		fmt.Fprintln(os.Stderr, "rrguard-local:", err)
		os.Exit(1)
	}
}

func run(demo bool, port int, metricsAddr, probeAddr, ns string) error {
	root, err := localcp.Root()
	if err != nil {
		return err
	}
	local := filepath.Join(root, "bin", "local")
	bundle, err := certs.Write(filepath.Join(local, "certs"), []string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		return err
	}
	fmt.Println("starting kube-apiserver and etcd ...")
	env, err := localcp.Start(localcp.Options{Webhooks: true, Serving: bundle, WebhookPort: port})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("stopping rrguard, kube-apiserver and etcd ...")
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop:", err)
		}
	}()

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if _, err := env.ServeRRGuard(ctx, func(o *serve.Options) {
		o.MetricsAddr, o.ProbeAddr = metricsAddr, probeAddr
		// Production timings (a 3 min release hold swept every 10 s, a 60 s request bound, a 10 s
		// index lag), so that decisions use the RR index and RRs are released as in a cluster.
		o.ReleaseMinAge, o.ReleaseEvery, o.RequestTimeout, o.IndexMaxLag = 0, 0, 0, 0
		if demo {
			o.MetricsAddr, o.ProbeAddr = "0", "0"
		}
	}); err != nil {
		return err
	}
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	// The API server picks up the webhook configurations' CA a moment after they change.
	name, err := checkUntil(ctx, env, ns, 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("rrguard answered a dry-run create through the API server: it would be named %s\n", name)
	kubeconfig := filepath.Join(local, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}
	if demo {
		return storm(ctx, env, ns)
	}
	fmt.Printf(`
rrguard is serving on https://127.0.0.1:%d (metrics http://%s/metrics, probes http://%s/readyz).
In another shell:

  export KUBECONFIG=%s
  kubectl -n %s create -f config/samples/remediationrequest.yaml   # stored as rr-<fingerprint[:32]>-1
  kubectl -n %s create -f config/samples/remediationrequest.yaml   # refused: AlreadyExists, naming it
  kubectl -n %s get rr

Ctrl-C stops everything.
`, port, metricsAddr, probeAddr, kubeconfig, ns, ns, ns)
	<-ctx.Done()
	return nil
}

// storm is GW-DEDUP-002 as first written, then at a hundred times the load.
func storm(ctx context.Context, env *localcp.Env, ns string) error {
	for i, n := range []int{5, 100} {
		fp := localcp.Fingerprint(fmt.Sprintf("demo/%d/%d", time.Now().UnixNano(), i))
		start := time.Now()
		out := localcp.Storm(ctx, env.Client, ns, []string{fp}, n)
		elapsed := time.Since(start)
		var stored []string
		refusedAs := map[string]int{}
		var errs []string
		for _, o := range out {
			switch {
			case o.Stored != "":
				stored = append(stored, o.Stored)
			case o.DuplicateOf != "":
				refusedAs[o.DuplicateOf]++
			default:
				errs = append(errs, o.Err.Error())
			}
		}
		fmt.Printf("\n%d simultaneous creates of fingerprint %s... (%.0f ms):\n", n, fp[:12], float64(elapsed.Microseconds())/1000)
		fmt.Printf("  stored:  %d %v\n", len(stored), stored)
		names := make([]string, 0, len(refusedAs))
		for name := range refusedAs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Printf("  refused: %d as duplicates of %s (409 AlreadyExists, details.name)\n", refusedAs[name], name)
		}
		if len(errs) > 0 {
			fmt.Printf("  other errors: %d, first: %s\n", len(errs), errs[0])
		}
		if len(stored) != 1 || len(errs) > 0 {
			return fmt.Errorf("storm of %d: %d stored, %d errors; want exactly 1 stored", n, len(stored), len(errs))
		}
	}
	return nil
}

func checkUntil(ctx context.Context, env *localcp.Env, ns string, limit time.Duration) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		name, err := cluster.Check(ctx, env.Client, ns)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return name, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
