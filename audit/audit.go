// Package audit reads a cluster's RemediationRequests and rrguard's high-water marks, read-only,
// and reports what rrguard's guarantee rules out: for a cluster that ran without rrguard, or with
// creators that bypassed it (a namespace it does not judge, a webhook removed for a while), before
// anyone relies on the guarantee.
package audit

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/kubernaut"
	"github.com/rrguard/rrguard/marks"
	"github.com/rrguard/rrguard/rules"
)

// Kind is what a finding is about.
type Kind string

const (
	// DuplicateInFlight: more than one RR of a fingerprint in flight in a namespace.
	DuplicateInFlight Kind = "duplicate-in-flight"
	// ForeignName: an RR whose name is not the scheme's for its fingerprint (rrguard did not
	// name it), so its name says nothing of its fingerprint's numbering.
	ForeignName Kind = "name-not-scheme"
	// NotCoveredByMark: an RR numbered above its fingerprint's mark that does not carry
	// rrguard's finalizer: deleted as it is, its number would be issued again.
	NotCoveredByMark Kind = "not-covered-by-mark"
	// CorruptMark: a mark entry rrguard cannot read (numbering refuses to guess).
	CorruptMark Kind = "corrupt-mark"
	// HeldPastTheHold: an RR that still carries rrguard's finalizer well after its hold ended
	// (ReleaseSlack past it): no replica is releasing it, so deleting it waits for rrguard, and
	// Kubernaut's orchestrator audits that deletion twice. The guarantee holds; the cost is the
	// trail's.
	HeldPastTheHold Kind = "held-past-the-hold"
)

// ReleaseSlack is how long past its hold an RR may still carry the finalizer before the audit
// reports it: rrguard sweeps every 10 s, and an upgrade from a release that held RRs for life
// releases about 100 per second.
const ReleaseSlack = 5 * time.Minute

// Finding is one thing the audit found.
type Finding struct {
	Kind        Kind     `json:"kind"`
	Namespace   string   `json:"namespace,omitempty"`
	Fingerprint string   `json:"fingerprint,omitempty"`
	Names       []string `json:"names,omitempty"`
	Detail      string   `json:"detail"`
}

// Report is the audit of a set of namespaces.
type Report struct {
	Namespaces   []string  `json:"namespaces"` // empty: every namespace
	RRs          int       `json:"rrs"`
	Fingerprints int       `json:"fingerprints"`
	Findings     []Finding `json:"findings"`
}

// rr is what the audit keeps of one RR: pages of full RRs are dropped as they are read.
type rr struct {
	name, fp  string
	inFlight  bool
	finalizer bool
	age       time.Duration
}

type key struct{ ns, fp string }

// Options say what to audit.
type Options struct {
	// Namespaces to read RRs from; all when empty.
	Namespaces []string
	// Marks reads the high-water marks (only its Namespace and Reader are used).
	Marks marks.Store
	// PageSize of the RR lists (500 when zero): a namespace of 100,000 RRs is read in pages.
	PageSize int64
	// Hold is rrguard's --release-min-age (marks.DefaultMinAge when zero).
	Hold time.Duration
	// Now is time.Now when nil.
	Now func() time.Time
}

// Run reads the RRs and the marks and assesses them.
func Run(ctx context.Context, c client.Reader, o Options) (Report, error) {
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	page := o.PageSize
	if page == 0 {
		page = 500
	}
	namespaces := o.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{""}
	}
	byKey := map[key][]rr{}
	t := now()
	for _, ns := range namespaces {
		cont := ""
		for {
			var list v1alpha1.RemediationRequestList
			if err := c.List(ctx, &list, client.InNamespace(ns), client.Limit(page), client.Continue(cont)); err != nil {
				return Report{}, fmt.Errorf("listing RemediationRequests: %w", err)
			}
			for i := range list.Items {
				item := &list.Items[i]
				k := key{item.Namespace, item.Spec.SignalFingerprint}
				byKey[k] = append(byKey[k], rr{name: item.Name, fp: item.Spec.SignalFingerprint,
					inFlight: kubernaut.InFlight(item, t), finalizer: slices.Contains(item.Finalizers, marks.Finalizer),
					age: t.Sub(item.CreationTimestamp.Time)})
			}
			if cont = list.Continue; cont == "" {
				break
			}
		}
	}
	all, corrupt, err := o.Marks.All(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("reading the high-water marks in %s: %w", o.Marks.Namespace, err)
	}
	hold := o.Hold
	if hold == 0 {
		hold = marks.DefaultMinAge
	}
	r := assess(byKey, all, corrupt, hold)
	r.Namespaces = o.Namespaces
	return r, nil
}

// assess finds, per namespace and fingerprint, what the guarantee rules out.
func assess(byKey map[key][]rr, markOf map[string]int64, corrupt []string, hold time.Duration) Report {
	r := Report{Fingerprints: len(byKey), Findings: []Finding{}}
	keys := make([]key, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].ns != keys[j].ns {
			return keys[i].ns < keys[j].ns
		}
		return keys[i].fp < keys[j].fp
	})
	for _, k := range keys {
		rrs := byKey[k]
		r.RRs += len(rrs)
		slices.SortFunc(rrs, func(a, b rr) int { return strings.Compare(a.name, b.name) })
		var inFlight []string
		for _, x := range rrs {
			if x.inFlight {
				inFlight = append(inFlight, x.name)
			}
		}
		for _, x := range rrs {
			if x.finalizer && x.age > hold+ReleaseSlack {
				r.Findings = append(r.Findings, Finding{Kind: HeldPastTheHold, Namespace: k.ns, Fingerprint: k.fp, Names: []string{x.name},
					Detail: fmt.Sprintf("carries rrguard's finalizer %s after its creation, past the %s hold: no rrguard replica is releasing it; its deletion would wait for one", x.age.Round(time.Second), hold)})
			}
		}
		if len(inFlight) > 1 {
			r.Findings = append(r.Findings, Finding{Kind: DuplicateInFlight, Namespace: k.ns, Fingerprint: k.fp, Names: inFlight,
				Detail: fmt.Sprintf("%d RRs of one fingerprint in flight; rrguard admits one", len(inFlight))})
		}
		if !rules.ValidFingerprint(k.fp) {
			// Neither naming nor marks apply to a fingerprint rrguard would refuse.
			continue
		}
		mark := markOf[marks.EntryKey(k.ns, k.fp)]
		for _, x := range rrs {
			n, ok := rules.Occurrence(k.fp, x.name)
			switch {
			case !ok:
				r.Findings = append(r.Findings, Finding{Kind: ForeignName, Namespace: k.ns, Fingerprint: k.fp, Names: []string{x.name},
					Detail: fmt.Sprintf("created without rrguard naming it (its names for this fingerprint are %s, -2, ...)", rules.Name(k.fp, 1))})
			case !x.finalizer && n > mark:
				r.Findings = append(r.Findings, Finding{Kind: NotCoveredByMark, Namespace: k.ns, Fingerprint: k.fp, Names: []string{x.name},
					Detail: fmt.Sprintf("number %d above the mark %d, without rrguard's finalizer: deleted now, its name could be issued again", n, mark)})
			}
		}
	}
	for _, c := range corrupt {
		r.Findings = append(r.Findings, Finding{Kind: CorruptMark, Names: []string{c}, Detail: "mark entry rrguard cannot read; numbering of its fingerprint is refused"})
	}
	return r
}
