// Command rrguard serves the admission webhooks that keep one RemediationRequest in flight per
// signal fingerprint. `rrguard check` verifies an install from the outside; `rrguard audit` reports,
// read-only, what the guarantee rules out among existing RRs; `rrguard release` frees every RR of
// rrguard's finalizer before an uninstall; `rrguard policy test` evaluates a UniquenessPolicy against
// object files, offline.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/audit"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/kubernaut/cluster"
	"github.com/rrguard/rrguard/webhook/serve"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "release" {
		os.Exit(release(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "policy" {
		os.Exit(policyCmd(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "audit" {
		os.Exit(auditCmd(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run serves until SIGINT or SIGTERM: 0 after a clean stop, 1 when rrguard cannot start (a port
// taken, say: every listener is bound before anything serves) or stops on an error. Its log goes
// to logs.
func run(args []string, logs io.Writer) int {
	fs := flag.NewFlagSet("rrguard", flag.ExitOnError)
	var o serve.Options
	fs.StringVar(&o.Host, "webhook-host", "", "address the webhook server listens on (all when empty)")
	fs.IntVar(&o.Port, "webhook-port", 9443, "port the webhook server listens on (0: any free port)")
	fs.StringVar(&o.CertDir, "cert-dir", "/tmp/k8s-webhook-server/serving-certs", "folder holding tls.crt and tls.key; reloaded on change")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8443", `Prometheus metrics address ("0" disables)`)
	fs.BoolVar(&o.MetricsSecure, "metrics-secure", true, "serve metrics over HTTPS to callers the API server authenticates and authorizes for GET /metrics (false: plain HTTP, anyone)")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", `/healthz and /readyz address ("0" disables)`)
	fs.StringVar(&o.PprofAddr, "pprof-bind-address", "0", `/debug/pprof address ("0" disables; for profiling only)`)
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", 10*time.Second, "time to keep serving, unready, after SIGTERM, so the API server stops sending first")
	fs.BoolVar(&o.ConsistentListOnly, "consistent-list-only", false, "decide every create from a consistent List and the mark (2 reads), never from the RR index")
	rrNamespaces := fs.String("rr-namespaces", os.Getenv("RR_NAMESPACES"), "comma-separated namespaces whose RRs rrguard judges and watches; creates elsewhere are refused (default $RR_NAMESPACES; empty: all)")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 60*time.Second, "the API server's --request-timeout: no create commits later than this after it began")
	fs.DurationVar(&o.IndexMaxLag, "index-max-lag", 10*time.Second, "how stale the RR index may be for a decision to use it; it is used only while --release-min-age > 2 x --request-timeout + this")
	fs.StringVar(&o.MarksNamespace, "marks-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the high-water mark ConfigMaps: rrguard's own (default $POD_NAMESPACE)")
	fs.DurationVar(&o.ReleaseMinAge, "release-min-age", marks.DefaultMinAge, "the hold: an RR keeps rrguard's finalizer this long after its creation, deleted or not; then its mark covers it and the finalizer goes (longer than 2 x --request-timeout + --index-max-lag)")
	fs.DurationVar(&o.ReleaseEvery, "release-every", marks.DefaultReleaseEvery, "how often to look for RRs past the hold that still carry the finalizer")
	fs.IntVar(&o.ReleaseBatch, "release-batch", marks.DefaultReleaseBatch, "at most this many RRs released per round (an upgrade releases the RRs an older release held for life about this many per second)")
	fs.DurationVar(&o.MarkHorizon, "mark-horizon", marks.DefaultHorizon, "remove the high-water mark of a fingerprint with no RR left once it is older than this (Kubernaut keeps audit data 2,555 days)")
	builtins := fs.String("builtin-policies", serve.RRPolicy, fmt.Sprintf("comma-separated built-in policies to enforce (of %s); empty: none, for a cluster without Kubernaut", strings.Join(policy.BuiltinNames(), ", ")))
	policyFiles := fs.String("policy-files", "", "comma-separated UniquenessPolicy files to enforce besides the built-in ones (each needs webhook rules and RBAC for its target: docs/design.md, \"Policies\")")
	_ = fs.String("webhook-configuration", "", "deprecated, ignored: the policies' webhooks take their client configuration from --webhook-service")
	webhookService := fs.String("webhook-service", "", "the Service (name, in rrguard's namespace, port 443) through which the API server calls rrguard: written into each policy's webhooks")
	webhookURL := fs.String("webhook-url", "", "instead of --webhook-service, for rrguard running outside the cluster: the https URL (scheme, host, port) at which the API server calls rrguard, written into each policy's webhooks")
	fs.StringVar(&o.PolicyWebhookCAFile, "webhook-ca-file", "", "the CA bundle that verifies rrguard's serving certificate, written into each policy's webhooks (default: ca.crt in --cert-dir, as cert-manager writes it)")
	fs.StringVar(&o.PoliciesWebhookConfiguration, "policies-webhook-configuration", serve.PoliciesWebhookConfiguration, "the Mutating and ValidatingWebhookConfigurations rrguard keeps in step with the cluster's UniquenessPolicies")
	qps := fs.Float64("kube-api-qps", 200, "client-side QPS limit for API reads (each create costs one)")
	burst := fs.Int("kube-api-burst", 400, "client-side burst for API reads")
	zo := zap.Options{DestWriter: logs}
	zo.BindFlags(fs)
	_ = fs.Parse(args)
	logger := zap.New(zap.UseFlagOptions(&zo))
	ctrl.SetLogger(logger)
	// run's own lines go to logs even where the process had set its logger before (tests).
	log := logger.WithName("rrguard")
	o.RRNamespaces = splitList(*rrNamespaces)
	switch {
	case *webhookService != "" && *webhookURL != "":
		log.Error(errors.New("--webhook-service and --webhook-url are two answers to one question: give one"), "refusing to start")
		return 1
	case *webhookService != "":
		o.PolicyWebhookClient.Service = &admissionregistrationv1.ServiceReference{Namespace: o.MarksNamespace, Name: *webhookService, Port: ptr.To[int32](443)}
	case *webhookURL != "":
		o.PolicyWebhookClient.URL = webhookURL
	}
	if o.PolicyWebhookCAFile == "" {
		o.PolicyWebhookCAFile = filepath.Join(o.CertDir, "ca.crt")
	}
	o.BuiltinPolicies = splitList(*builtins)

	if err := o.IndexSafety(); err != nil {
		log.Error(err, "refusing to start")
		return 1
	}
	for _, f := range splitList(*policyFiles) {
		b, err := os.ReadFile(f)
		if err == nil {
			var p *rrguardv1.UniquenessPolicy
			if p, err = policy.ReadPolicy(b); err == nil {
				o.Policies = append(o.Policies, p)
			}
		}
		if err != nil {
			log.Error(err, "refusing to start: a policy file", "file", f)
			return 1
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

// release removes rrguard's finalizer from every object of every policy (the built-in ones
// enabled, those given by file, the cluster's UniquenessPolicies), for uninstalling: without
// rrguard running, nothing else would, and deleted objects would wait for ever. It raises each
// object's mark first, as the controller does, so a reinstall that keeps the marks does not
// reissue their names. It reads and patches metadata only.
func release(args []string) int {
	fs := flag.NewFlagSet("rrguard release", flag.ExitOnError)
	namespaces := fs.String("namespaces", os.Getenv("RR_NAMESPACES"), "comma-separated namespaces to release RRs in, as rrguard's --rr-namespaces (default $RR_NAMESPACES; empty: every namespace); other policies' objects are released in their own namespaces")
	marksNS := fs.String("marks-namespace", "rrguard-system", "namespace of the high-water mark ConfigMaps")
	builtins := fs.String("builtin-policies", serve.RRPolicy, "comma-separated built-in policies whose objects to release (as rrguard's flag)")
	policyFiles := fs.String("policy-files", "", "comma-separated UniquenessPolicy files whose objects to release (as rrguard's flag)")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to try")
	_ = fs.Parse(args)
	c, err := apiClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// The built-in policies and files first: a cluster whose policies cannot be listed still
	// gets those released. Each policy's failure is reported, and the others still released.
	ps, err := policiesOf(ctx, c, splitList(*builtins), splitList(*policyFiles))
	failed := 0
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		failed++
	}
	for _, p := range ps {
		// A policy rrguard refused (a second one for a target) named nothing: releasing with its
		// prefix would drop finalizers without raising the marks of the names the enforced one gave.
		if c := meta.FindStatusCondition(p.Status.Conditions, rrguardv1.ConditionEnforced); c != nil && c.Reason == serve.ReasonConflictingPolicy {
			fmt.Printf("skipped policy %s: refused (%s), it named nothing\n", p.Name, c.Message)
			continue
		}
		cp, err := policy.Compile(p, "")
		if err != nil {
			fmt.Printf("skipped policy %s: %v\n", p.Name, err)
			continue
		}
		gvk, err := c.RESTMapper().KindFor(cp.GroupResource.WithVersion(cp.Versions[0]))
		if err != nil {
			fmt.Printf("skipped policy %s: its target %s is not served: %v\n", p.Name, cp.GroupResource, err)
			continue
		}
		nss := cp.Namespaces
		if p.Name == serve.RRPolicy && slices.Contains(splitList(*builtins), p.Name) {
			nss = splitList(*namespaces)
		}
		store := marks.Store{Namespace: *marksNS, Reader: c, Writer: c, Scope: marks.ScopeOf(cp.GroupResource.Group, cp.GroupResource.Resource)}
		n, err := marks.ReleaseAll(ctx, c, store, gvk, cp.NamePrefix(), nss...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FAIL after releasing %d %s of policy %s: %v\n", n, cp.GroupResource, p.Name, err)
			failed++
			continue
		}
		fmt.Printf("OK: released %d %s of policy %s from rrguard's finalizer\n", n, cp.GroupResource, p.Name)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// policiesOf is every policy rrguard may have enforced: the built-in ones named, those in files, and
// the cluster's UniquenessPolicies (none where their CRD is not installed).
func policiesOf(ctx context.Context, c client.Client, builtins, files []string) ([]*rrguardv1.UniquenessPolicy, error) {
	var out []*rrguardv1.UniquenessPolicy
	for _, name := range builtins {
		p, err := policy.Builtin(name)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		p, err := policy.ReadPolicy(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, p)
	}
	var list rrguardv1.UniquenessPolicyList
	switch err := c.List(ctx, &list); {
	case meta.IsNoMatchError(err):
	case err != nil:
		return out, fmt.Errorf("listing UniquenessPolicies: %w", err)
	}
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out, nil
}

// check makes a dry-run create through the API server, as an RR creator would, and reports
// whether rrguard answered (dry-run: nothing is stored; the webhooks declare sideEffects None);
// then the serving certificate: Ready, expiry, issuer, and whether each webhook configuration's
// CA bundle verifies it for the host the API server calls.
func check(args []string) int {
	fs := flag.NewFlagSet("rrguard check", flag.ExitOnError)
	ns := fs.String("namespace", "kubernaut-system", "namespace where RemediationRequests (or the -f object) are created")
	policyName := fs.String("policy", "", "with -f: the policy (built in, or the cluster's) whose target the object is; rrguard must name it by that policy's scheme")
	objectFile := fs.String("f", "", "an object of the policy's target, carrying its key, to dry-run create instead of an RR (for a cluster without Kubernaut)")
	certificate := fs.String("certificate", "rrguard-system/rrguard-serving-cert", `cert-manager Certificate (namespace/name) rrguard serves; "" skips the certificate check`)
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for the answer")
	_ = fs.Parse(args)
	c, err := apiClient(cmapi.AddToScheme)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	what, name := "RR", ""
	if *objectFile != "" {
		what, name, err = checkPolicy(ctx, c, *policyName, *objectFile, *ns)
	} else {
		name, err = cluster.Check(ctx, c, *ns)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	fmt.Printf("OK: rrguard answered through the API server; a new %s in %s would be named %s (dry run, nothing stored)\n", what, *ns, name)
	if cfg, err := ctrl.GetConfig(); err == nil {
		api, err := serve.ProbeAPIServer(ctx, cfg)
		switch {
		case err != nil:
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		default:
			fmt.Println(apiServerLine(api))
		}
	}
	if *certificate == "" {
		return 0
	}
	certNS, certName, ok := strings.Cut(*certificate, "/")
	if !ok {
		fmt.Fprintf(os.Stderr, "FAIL: --certificate %q: want namespace/name\n", *certificate)
		return 1
	}
	r, err := serve.CheckCertificate(ctx, c, certNS, certName)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v (--certificate \"\" skips this check when TLS does not come from cert-manager)\n", err)
		return 1
	}
	fmt.Printf("certificate %s: ready %v, expires %s (in %s), issuer %s\n", r.Certificate, r.Ready,
		r.NotAfter.Format(time.RFC3339), time.Until(r.NotAfter).Round(time.Hour), r.Issuer)
	for _, w := range r.Webhooks {
		fmt.Printf("  %s %s: CA bundle trusts the served certificate: %v %s\n", w.Configuration, w.Webhook, w.Trusted, w.Problem)
	}
	if err := r.Err(time.Now()); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	fmt.Println("OK: the serving certificate is ready and every webhook configuration trusts it")
	return 0
}

// auditCmd reports, read-only, what rrguard's guarantee rules out among the objects of a policy
// (RRs by default) in the given namespaces: exit 0 when nothing, 1 when it found something, 2 when
// it could not tell.
func auditCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rrguard audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policyName := fs.String("policy", serve.RRPolicy, "the policy whose objects to audit: a built-in one or a UniquenessPolicy in the cluster")
	namespaces := fs.String("namespaces", "", "comma-separated namespaces to audit (default: the policy's target namespaces; for the RR policy $RR_NAMESPACES; empty: every namespace)")
	marksNS := fs.String("marks-namespace", "rrguard-system", "namespace of the high-water mark ConfigMaps")
	hold := fs.Duration("release-min-age", marks.DefaultMinAge, "rrguard's --release-min-age: an object that still carries the finalizer 5 minutes past it is reported")
	output := fs.String("o", "text", "output: text or json")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to try")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "rrguard audit: -o %q: want text or json\n", *output)
		return 2
	}
	c, err := apiClient()
	if err != nil {
		fmt.Fprintln(stderr, "FAIL:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cp, gvk, err := policyNamed(ctx, c, *policyName)
	if err != nil {
		fmt.Fprintln(stderr, "FAIL:", err)
		return 2
	}
	nss := cp.Namespaces
	switch {
	case *namespaces != "":
		nss = splitList(*namespaces)
	case cp.Policy == serve.RRPolicy:
		nss = splitList(os.Getenv("RR_NAMESPACES"))
	}
	r, err := audit.Run(ctx, c, audit.Options{Policy: cp, Kind: gvk, Namespaces: nss, Marks: marks.Store{Namespace: *marksNS, Reader: c}, Hold: *hold})
	if err != nil {
		fmt.Fprintln(stderr, "FAIL:", err)
		return 2
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	} else {
		for _, f := range r.Findings {
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\t%s\n", f.Kind, f.Namespace, f.Key, strings.Join(f.Names, ","), f.Detail)
		}
		fmt.Fprintf(stdout, "%d %s of policy %s, %d keys: %d findings\n", r.Objects, r.Resource, r.Policy, r.Keys, len(r.Findings))
	}
	if len(r.Findings) > 0 {
		return 1
	}
	return 0
}

// policyNamed is the policy of that name, built in or in the cluster, compiled, and its target's
// kind as the API server serves it.
func policyNamed(ctx context.Context, c client.Client, name string) (*policy.Compiled, schema.GroupVersionKind, error) {
	ps, err := policiesOf(ctx, c, policy.BuiltinNames(), nil)
	if err != nil {
		return nil, schema.GroupVersionKind{}, err
	}
	i := slices.IndexFunc(ps, func(p *rrguardv1.UniquenessPolicy) bool { return p.Name == name })
	if i < 0 {
		return nil, schema.GroupVersionKind{}, fmt.Errorf("no policy %s, built in or in the cluster", name)
	}
	cp, err := policy.Compile(ps[i], "")
	if err != nil {
		return nil, schema.GroupVersionKind{}, err
	}
	gvk, err := c.RESTMapper().KindFor(cp.GroupResource.WithVersion(cp.Versions[0]))
	if err != nil {
		return nil, schema.GroupVersionKind{}, fmt.Errorf("the target of policy %s, %s, is not served: %w", name, cp.GroupResource, err)
	}
	return cp, gvk, nil
}

// checkPolicy dry-run creates the object of file through the API server and checks that rrguard
// named it by policy's scheme; it returns what was created (its resource) and the name given.
func checkPolicy(ctx context.Context, c client.Client, policyName, file, namespace string) (string, string, error) {
	if policyName == "" {
		return "", "", errors.New("-f needs --policy, the policy whose target the object is")
	}
	cp, _, err := policyNamed(ctx, c, policyName)
	if err != nil {
		return "", "", err
	}
	r, err := os.Open(file)
	if err != nil {
		return "", "", err
	}
	defer r.Close()
	objs, err := policy.ReadObjects(r)
	if err != nil || len(objs) != 1 {
		return "", "", fmt.Errorf("%s: want one object (%d read): %v", file, len(objs), err)
	}
	u := objs[0]
	if u.GetNamespace() == "" {
		u.SetNamespace(namespace)
	}
	keyHex, _, err := cp.Key(ctx, u.Object)
	if err != nil {
		return "", "", fmt.Errorf("the object has no key under policy %s (%v): rrguard would leave it alone, so it checks nothing", policyName, err)
	}
	name, err := serve.Check(ctx, c, u, cp.NamePrefix())
	if err != nil {
		return "", "", err
	}
	if _, ok := cp.Occurrence(keyHex, name); !ok {
		return "", "", fmt.Errorf("the API server stored the object as %s, not a name of its key under policy %s", name, policyName)
	}
	return cp.GroupResource.String(), name, nil
}

// apiServerLine says what the API server offers rrguard, and what each feature that is off costs.
func apiServerLine(a serve.APIServer) string {
	tested := fmt.Sprintf("tested (1.%d to 1.%d)", serve.OldestMinor, serve.NewestMinor)
	if !a.Tested {
		tested = fmt.Sprintf("newer than tested (1.%d to 1.%d)", serve.OldestMinor, serve.NewestMinor)
	}
	return fmt.Sprintf("API server %s: %s", a.GitVersion, tested)
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// apiClient is an uncached client of the current kubeconfig (or in-cluster configuration), for
// rrguard's types and any added.
func apiClient(add ...func(*runtime.Scheme) error) (client.Client, error) {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("no Kubernetes configuration: %w", err)
	}
	scheme := cluster.Scheme()
	for _, f := range add {
		if err := f(scheme); err != nil {
			return nil, err
		}
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}
