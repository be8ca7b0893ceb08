// Command bare is the benchmark's limit: the cheapest mutating webhook that can name an RR after
// its fingerprint (and a PipelineRun after the Tekton sample's key, for make bench-policy). It
// decodes the object and answers with the same kind of patch as rrguard, and does nothing else: no
// watch, no API read, no finalizer, no metrics of its own. Whatever a create through it costs over
// a plain create is what any webhook costs on this machine.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap/zapcore"
	"gomodules.xyz/jsonpatch/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
)

// Path is where the benchmark's webhook configuration points; PipelineRunPath, bench-policy's.
const (
	Path            = "/mutate-remediationrequest"
	PipelineRunPath = "/mutate-pipelinerun"
)

func main() {
	host := flag.String("host", "127.0.0.1", "listen host")
	port := flag.Int("port", 0, "listen port")
	certDir := flag.String("cert-dir", "", "folder holding tls.crt and tls.key")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel)))
	srv := webhook.NewServer(webhook.Options{Host: *host, Port: *port, CertDir: *certDir,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}})
	srv.Register(Path, &webhook.Admission{Handler: admission.HandlerFunc(name)})
	srv.Register(PipelineRunPath, &webhook.Admission{Handler: admission.HandlerFunc(namePipelineRun)})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}

// name gives the RR occurrence 1 of its fingerprint: every benchmark row uses new fingerprints.
func name(_ context.Context, req admission.Request) admission.Response {
	var rr v1alpha1.RemediationRequest
	if err := json.Unmarshal(req.Object.Raw, &rr); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if !rules.ValidFingerprint(rr.Spec.SignalFingerprint) {
		return admission.Denied("bad fingerprint")
	}
	return admission.Patched("named", jsonpatch.JsonPatchOperation{
		Operation: "add", Path: "/metadata/name", Value: rules.Name(rr.Spec.SignalFingerprint, 1),
	})
}

// namePipelineRun gives the PipelineRun occurrence 1 of its key, as the Tekton sample's policy
// names it (config/samples/tekton-pipelinerun.yaml): every row uses new keys.
func namePipelineRun(_ context.Context, req admission.Request) admission.Response {
	var pr struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(req.Object.Raw, &pr); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	key := pr.Metadata.Labels["ci.example.com/repo"] + "/" + pr.Metadata.Labels["ci.example.com/branch"]
	return admission.Patched("named", jsonpatch.JsonPatchOperation{
		Operation: "add", Path: "/metadata/name", Value: rules.NameFor("pr-", rules.HashKey(key), 1),
	})
}
