// Command rrguard serves the admission webhooks that keep one RemediationRequest in flight per
// signal fingerprint. `rrguard check` verifies an install from the outside.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rrguard/rrguard/marks"
	"github.com/rrguard/rrguard/webhook/serve"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "release" {
		os.Exit(release(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("rrguard", flag.ExitOnError)
	var o serve.Options
	fs.StringVar(&o.Host, "webhook-host", "", "address the webhook server listens on (all when empty)")
	fs.IntVar(&o.Port, "webhook-port", 9443, "port the webhook server listens on")
	fs.StringVar(&o.CertDir, "cert-dir", "/tmp/k8s-webhook-server/serving-certs", "folder holding tls.crt and tls.key; reloaded on change")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080", `Prometheus metrics address ("0" disables)`)
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", `/healthz and /readyz address ("0" disables)`)
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "0", `/debug/pprof address ("0" disables; for profiling only)`)
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", 10*time.Second, "time to keep serving, unready, after SIGTERM, so the API server stops sending first")
	fs.BoolVar(&o.ConsistentListOnly, "consistent-list-only", false, "decide every create from a consistent List and the mark (2 reads), never from the RR index")
	rrNamespaces := fs.String("rr-namespaces", os.Getenv("RR_NAMESPACES"), "comma-separated namespaces whose RRs rrguard judges and watches; creates elsewhere are refused (default $RR_NAMESPACES; empty: all)")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 60*time.Second, "the API server's --request-timeout: no create commits later than this after it began")
	fs.DurationVar(&o.IndexMaxLag, "index-max-lag", 10*time.Second, "how stale the RR index may be for a decision to use it; it is used only while --release-min-age > 2 x --request-timeout + this")
	fs.StringVar(&o.MarksNamespace, "marks-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the high-water mark ConfigMaps: rrguard's own (default $POD_NAMESPACE)")
	fs.DurationVar(&o.ReleaseMinAge, "release-min-age", marks.DefaultMinAge, "hold a deleted RR at least this long after its creation (longer than the API server's --request-timeout)")
	fs.DurationVar(&o.MarkHorizon, "mark-horizon", marks.DefaultHorizon, "remove the high-water mark of a fingerprint with no RR left once it is older than this (Kubernaut keeps audit data 2,555 days)")
	qps := fs.Float64("kube-api-qps", 200, "client-side QPS limit for API reads (each create costs one)")
	burst := fs.Int("kube-api-burst", 400, "client-side burst for API reads")
	zo := zap.Options{}
	zo.BindFlags(fs)
	_ = fs.Parse(args)
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zo)))
	log := ctrl.Log.WithName("rrguard")
	for _, ns := range strings.Split(*rrNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			o.RRNamespaces = append(o.RRNamespaces, ns)
		}
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "no Kubernetes configuration")
		return 1
	}
	cfg.QPS, cfg.Burst = float32(*qps), *burst
	r, err := serve.New(cfg, o)
	if err != nil {
		log.Error(err, "cannot set up")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log.Info("serving", "port", o.Port, "certDir", o.CertDir)
	if err := r.Run(ctx); err != nil {
		log.Error(err, "stopped")
		return 1
	}
	return 0
}

// release removes rrguard's finalizer from every RR, for uninstalling: without rrguard running,
// nothing else would, and deleted RRs would wait for ever. It raises each RR's mark first, as the
// controller does, so a reinstall that keeps the marks does not reissue their names.
func release(args []string) int {
	fs := flag.NewFlagSet("rrguard release", flag.ExitOnError)
	marksNS := fs.String("marks-namespace", "rrguard-system", "namespace of the high-water mark ConfigMaps")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to try")
	_ = fs.Parse(args)
	c, err := apiClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	n, err := marks.ReleaseAll(ctx, c, marks.Store{Namespace: *marksNS, Reader: c, Writer: c})
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL after releasing %d RRs: %v\n", n, err)
		return 1
	}
	fmt.Printf("OK: released %d RRs from rrguard's finalizer\n", n)
	return 0
}

// check makes a dry-run create through the API server, as an RR creator would, and reports
// whether rrguard answered. Dry-run: nothing is stored (the webhooks declare sideEffects None).
func check(args []string) int {
	fs := flag.NewFlagSet("rrguard check", flag.ExitOnError)
	ns := fs.String("namespace", "kubernaut-system", "namespace where RemediationRequests are created")
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for the answer")
	_ = fs.Parse(args)
	c, err := apiClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	name, err := serve.Check(ctx, c, *ns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	fmt.Printf("OK: rrguard answered through the API server; a new RR in %s would be named %s (dry run, nothing stored)\n", *ns, name)
	return 0
}

// apiClient is an uncached client of the current kubeconfig (or in-cluster configuration).
func apiClient() (client.Client, error) {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("no Kubernetes configuration: %w", err)
	}
	return client.New(cfg, client.Options{Scheme: serve.Scheme()})
}
