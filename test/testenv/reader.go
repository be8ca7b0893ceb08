package testenv

import (
	"k8s.io/client-go/rest"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rrfacts"
)

// RRReader is an RR index, never started, for its consistent reads (ReadKey): by the
// fingerprint's field selector when fieldSelectable, else by a namespace scan.
func RRReader(cfg *rest.Config, fieldSelectable bool) (*rrfacts.Index, error) {
	p, err := policy.RemediationRequests()
	if err != nil {
		return nil, err
	}
	return rrfacts.New(cfg, rrfacts.Options{Policy: p, Kind: v1alpha1.GroupVersion.WithKind("RemediationRequest"),
		FieldSelectable: fieldSelectable, MarkKey: marks.EntryKey})
}
