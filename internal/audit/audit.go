// Package audit reads the objects of a policy's target (RemediationRequests, by default) and
// rrguard's high-water marks, read-only, and reports what rrguard's guarantee rules out: for a
// cluster that ran without rrguard, or with creators that bypassed it (a namespace it does not
// judge, a webhook removed for a while), before anyone relies on the guarantee. It judges every
// object with the policy's compiled expressions, as rrguard does.
package audit

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/marks"
	"github.com/rrguard/rrguard/internal/policy"
)

// Kind is what a finding is about.
type Kind string

const (
	// DuplicateInFlight: more than one object of a key in flight in a namespace.
	DuplicateInFlight Kind = "duplicate-in-flight"
	// ForeignName: an object whose name is not the scheme's for its key (rrguard did not name
	// it), so its name says nothing of its key's numbering.
	ForeignName Kind = "name-not-scheme"
	// NotCoveredByMark: an object numbered above its key's mark that does not carry rrguard's
	// finalizer: deleted as it is, its number would be issued again (policies with names for
	// life).
	NotCoveredByMark Kind = "not-covered-by-mark"
	// CorruptMark: a mark entry of the policy's target rrguard cannot read (numbering refuses to
	// guess).
	CorruptMark Kind = "corrupt-mark"
	// HeldPastTheHold: an object that still carries rrguard's finalizer well after its hold ended
	// (ReleaseSlack past it): no replica is releasing it, so deleting it waits for rrguard (and,
	// for an RR, Kubernaut's orchestrator audits that deletion twice). The guarantee holds; the
	// cost is the trail's.
	HeldPastTheHold Kind = "held-past-the-hold"
)

// ReleaseSlack is how long past its hold an object may still carry the finalizer before the audit
// reports it: rrguard sweeps every 10 s, and an upgrade from a release that held RRs for life
// releases about 100 per second.
const ReleaseSlack = 5 * time.Minute

// Finding is one thing the audit found.
type Finding struct {
	Kind      Kind   `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	// Key is the key's hex form (an RR's fingerprint).
	Key    string   `json:"key,omitempty"`
	Names  []string `json:"names,omitempty"`
	Detail string   `json:"detail"`
}

// Report is the audit of a policy's objects in a set of namespaces.
type Report struct {
	Policy     string   `json:"policy"`
	Resource   string   `json:"resource"`
	Namespaces []string `json:"namespaces"` // empty: every namespace
	// Objects the policy judges (a match condition true, the key present), and their keys.
	Objects  int       `json:"objects"`
	Keys     int       `json:"keys"`
	Findings []Finding `json:"findings"`
}

// object is what the audit keeps of one object: pages of full objects are dropped as they are
// read.
type object struct {
	name      string
	inFlight  bool
	finalizer bool
	age       time.Duration
}

type key struct{ ns, keyHex string }

// Options say what to audit.
type Options struct {
	// Policy judges the objects; Kind is its target's.
	Policy *policy.Compiled
	Kind   schema.GroupVersionKind
	// Namespaces to read objects from; all when empty.
	Namespaces []string
	// Marks reads the high-water marks (only its Namespace and Reader are used; its Scope is
	// set from the target).
	Marks marks.Store
	// PageSize of the lists (defaultPage when zero): a namespace of 100,000 objects is read in
	// pages.
	PageSize int64
	// Hold is rrguard's --release-min-age (marks.DefaultMinAge when zero).
	Hold time.Duration
	// Now is time.Now when nil.
	Now func() time.Time
}

// defaultPage is the page size of the lists: a few MB of objects of kilobytes each.
const defaultPage = 500

// Run reads the policy's objects and the marks and assesses them.
func Run(ctx context.Context, c client.Reader, o Options) (Report, error) {
	if o.Policy == nil || o.Kind.Kind == "" {
		return Report{}, fmt.Errorf("audit: Options.Policy and Options.Kind are required")
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	page := o.PageSize
	if page == 0 {
		page = defaultPage
	}
	namespaces := o.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{""}
	}
	p := o.Policy
	byKey := map[key][]object{}
	t := now()
	for _, ns := range namespaces {
		cont := ""
		for {
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(o.Kind.GroupVersion().WithKind(o.Kind.Kind + "List"))
			if err := c.List(ctx, list, client.InNamespace(ns), client.Limit(page), client.Continue(cont)); err != nil {
				return Report{}, fmt.Errorf("listing %s: %w", p.GroupResource, err)
			}
			for i := range list.Items {
				item := &list.Items[i]
				// What rrguard would not judge is not audited; a rule that fails on an object keeps
				// it in flight, as in the index.
				f, keyHex, judged, _ := p.Judge(ctx, item.Object, item.GetName(), item.GetCreationTimestamp().Time, item.GetDeletionTimestamp() != nil)
				if !judged {
					continue
				}
				k := key{item.GetNamespace(), keyHex}
				byKey[k] = append(byKey[k], object{name: item.GetName(), inFlight: f.InFlight(t),
					finalizer: slices.Contains(item.GetFinalizers(), marks.Finalizer), age: t.Sub(item.GetCreationTimestamp().Time)})
			}
			if cont = list.GetContinue(); cont == "" {
				break
			}
		}
	}
	store := o.Marks
	store.Scope = marks.ScopeOf(p.GroupResource.Group, p.GroupResource.Resource)
	all, corrupt, err := store.All(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("reading the high-water marks in %s: %w", store.Namespace, err)
	}
	corrupt = slices.DeleteFunc(corrupt, func(c string) bool {
		_, entry, _ := strings.Cut(c, "/")
		return !store.Owns(entry)
	})
	hold := o.Hold
	if hold == 0 {
		hold = marks.DefaultMinAge
	}
	r := assess(p, store, byKey, all, corrupt, hold)
	r.Policy, r.Resource, r.Namespaces = p.Policy, p.GroupResource.String(), o.Namespaces
	return r, nil
}

// assess finds, per namespace and key, what the guarantee rules out.
func assess(p *policy.Compiled, store marks.Store, byKey map[key][]object, markOf map[string]int64, corrupt []string, hold time.Duration) Report {
	r := Report{Keys: len(byKey), Findings: []Finding{}}
	keys := make([]key, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].ns != keys[j].ns {
			return keys[i].ns < keys[j].ns
		}
		return keys[i].keyHex < keys[j].keyHex
	})
	for _, k := range keys {
		objs := byKey[k]
		r.Objects += len(objs)
		slices.SortFunc(objs, func(a, b object) int { return strings.Compare(a.name, b.name) })
		var inFlight []string
		for _, x := range objs {
			if x.inFlight {
				inFlight = append(inFlight, x.name)
			}
		}
		for _, x := range objs {
			if x.finalizer && x.age > hold+ReleaseSlack {
				r.Findings = append(r.Findings, Finding{Kind: HeldPastTheHold, Namespace: k.ns, Key: k.keyHex, Names: []string{x.name},
					Detail: fmt.Sprintf("carries rrguard's finalizer %s after its creation, past the %s hold: no rrguard replica is releasing it; its deletion would wait for one", x.age.Round(time.Second), hold)})
			}
		}
		if len(inFlight) > 1 {
			r.Findings = append(r.Findings, Finding{Kind: DuplicateInFlight, Namespace: k.ns, Key: k.keyHex, Names: inFlight,
				Detail: fmt.Sprintf("%d objects of one key in flight; rrguard admits one", len(inFlight))})
		}
		mark := markOf[store.EntryKey(k.ns, k.keyHex)]
		for _, x := range objs {
			n, ok := p.Occurrence(k.keyHex, x.name)
			switch {
			case !ok:
				r.Findings = append(r.Findings, Finding{Kind: ForeignName, Namespace: k.ns, Key: k.keyHex, Names: []string{x.name},
					Detail: fmt.Sprintf("created without rrguard naming it (its names for this key are %s, -2, ...)", p.Name(k.keyHex, 1))})
			case p.NamesForLife && !x.finalizer && n > mark:
				r.Findings = append(r.Findings, Finding{Kind: NotCoveredByMark, Namespace: k.ns, Key: k.keyHex, Names: []string{x.name},
					Detail: fmt.Sprintf("number %d above the mark %d, without rrguard's finalizer: deleted now, its name could be issued again", n, mark)})
			}
		}
	}
	for _, c := range corrupt {
		r.Findings = append(r.Findings, Finding{Kind: CorruptMark, Names: []string{c}, Detail: "mark entry rrguard cannot read; numbering of its fingerprint is refused"})
	}
	return r
}
