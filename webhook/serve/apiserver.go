package serve

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
)

// The Kubernetes releases rrguard is tested on (make test-k8s); the chart's kubeVersion says the
// same.
const (
	OldestMinor = 32
	NewestMinor = 37
)

// ErrUntestedRelease is the refusal to start on an API server older than OldestMinor: rrguard's
// guarantee is argued and tested against the API servers of the tested range only.
var ErrUntestedRelease = errors.New("kube-apiserver older than the oldest release rrguard is tested on")

var apiServerFeature = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "rrguard_api_server_feature",
	Help: "What the API server offers that rrguard relies on, probed at start-up (1 on, 0 off): tested-release (its minor is in the tested range).",
}, []string{"feature"})

var consistentRead = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "rrguard_policy_consistent_read",
	Help: "1 for the consistent read a policy's decisions fall back to (FieldSelector, LabelSelector, NamespaceScan: a key that is one field the CRD does not declare selectable scans the namespace), by policy.",
}, []string{"policy", "read"})

func init() { metrics.Registry.MustRegister(apiServerFeature, consistentRead) }

// APIServer is what the start-up probe found.
type APIServer struct {
	GitVersion string
	// Tested: the release is in the tested range (a newer one is served, with a warning).
	Tested bool
}

// CheckRelease says whether rrguard may run on an API server of gitVersion: an error below the
// tested range, tested false above it.
func CheckRelease(gitVersion string) (tested bool, err error) {
	v, err := version.ParseGeneric(gitVersion)
	if err != nil {
		return false, fmt.Errorf("the API server's version %q: %w", gitVersion, err)
	}
	switch {
	case v.Major() != 1:
		return false, fmt.Errorf("the API server's version %q: not Kubernetes 1.x", gitVersion)
	case v.Minor() < OldestMinor:
		return false, fmt.Errorf("%w: %s, tested on 1.%d to 1.%d (CRD selectable fields, which the consistent read by fingerprint uses, are GA from 1.32)",
			ErrUntestedRelease, gitVersion, OldestMinor, NewestMinor)
	}
	return v.Minor() <= NewestMinor, nil
}

// ProbeAPIServer reads the API server's version, retrying transient errors for up to a minute.
func ProbeAPIServer(ctx context.Context, cfg *rest.Config) (APIServer, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return APIServer{}, err
	}
	var a APIServer
	var last error
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		info, err := dc.ServerVersion()
		if err != nil {
			last = err
			return false, nil
		}
		a.GitVersion = info.GitVersion
		if a.Tested, err = CheckRelease(info.GitVersion); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil && last != nil && !errors.Is(err, ErrUntestedRelease) {
		err = fmt.Errorf("probing the API server: %w", last)
	}
	return a, err
}

// report logs and exports what the probe found: every feature that is off, and what it costs.
func (a APIServer) report() {
	log := ctrl.Log.WithName("apiserver")
	gauge := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	apiServerFeature.WithLabelValues("tested-release").Set(gauge(a.Tested))
	if !a.Tested {
		log.Info("the API server is newer than the newest release rrguard is tested on", "version", a.GitVersion, "tested", fmt.Sprintf("1.%d-1.%d", OldestMinor, NewestMinor))
	}
}

// probeFieldSelector asks the API server once for gvk's objects by a field selector on field: true
// when it serves it, false when it refuses the selector (a CRD that does not declare the field
// selectable), any other error as it came (the target not served, no access).
func probeFieldSelector(ctx context.Context, r client.Reader, gvk schema.GroupVersionKind, field, namespace string) (bool, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
	err := r.List(ctx, list, client.InNamespace(namespace), client.Limit(1), client.MatchingFields{field: "rrguard-probe"})
	if apierrors.IsBadRequest(err) {
		return false, nil
	}
	return err == nil, err
}

// forgetRead drops a policy no longer enforced here from rrguard_policy_consistent_read.
func forgetRead(policy string) {
	consistentRead.DeletePartialMatch(prometheus.Labels{"policy": policy})
}

// reportRead exports and, when it costs, logs the consistent read policy c's decisions fall back to.
func reportRead(c *policy.Compiled, read rrguardv1.ConsistentRead) {
	for _, r := range []rrguardv1.ConsistentRead{rrguardv1.ReadFieldSelector, rrguardv1.ReadLabelSelector, rrguardv1.ReadNamespaceScan} {
		v := 0.0
		if r == read {
			v = 1
		}
		consistentRead.WithLabelValues(c.Policy, string(r)).Set(v)
	}
	if c.Read == rrguardv1.ReadFieldSelector && read == rrguardv1.ReadNamespaceScan {
		ctrl.Log.WithName("policies").Info("the target does not declare the key's field selectable: "+
			"a consistent read lists the whole namespace in pages and filters (at 10,000 RRs, 2.5 s and 117x the API server's CPU of a read by selector); declare the field selectable on the CRD",
			"policy", c.Policy, "target", c.GroupResource.String(), "field", c.KeyField)
	}
}
