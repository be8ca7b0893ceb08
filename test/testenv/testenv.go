// Package testenv is the integration tests' and benchmarks' environment: the local control plane
// of internal/localcp (a real kube-apiserver and etcd, never a fake), with what only tests need:
// test namespaces, fault injection at a client's transport (Gate, Proxy), request counting,
// metrics and webhook re-pointing.
package testenv

import (
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/rrguard/rrguard/internal/localcp"
)

// Env is a running control plane, with the tests' helpers.
type Env struct{ *localcp.Env }

// Options choose what to install beside the CRD.
type Options = localcp.Options

// Outcome is one create's result in a Storm.
type Outcome = localcp.Outcome

const (
	// K8sVersion is the version of the control plane `make testbin` builds.
	K8sVersion = localcp.K8sVersion
	// MarksNamespace is rrguard's own namespace in tests: it holds the high-water marks.
	MarksNamespace = localcp.MarksNamespace
)

var (
	// ErrNoBinaries means `make testbin` has not run on this machine.
	ErrNoBinaries = localcp.ErrNoBinaries

	Root                      = localcp.Root
	BinDir                    = localcp.BinDir
	Fingerprint               = localcp.Fingerprint
	NewRR                     = localcp.NewRR
	WaitFinishedJudged        = localcp.WaitFinishedJudged
	Storm                     = localcp.Storm
	Kustomize                 = localcp.Kustomize
	KustomizeWithCheckWebhook = localcp.KustomizeWithCheckWebhook
	Objects                   = localcp.Objects
	Policy                    = localcp.Policy
)

// Start starts the control plane (see localcp.Start).
func Start(o Options) (*Env, error) {
	e, err := localcp.Start(o)
	if err != nil {
		return nil, err
	}
	return &Env{e}, nil
}

// DetailsName is the object a refusal names (its status details), "" when it names none: a 409
// from rrguard or the API server names the object in flight.
func DetailsName(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Details != nil {
		return st.Status().Details.Name
	}
	return ""
}
