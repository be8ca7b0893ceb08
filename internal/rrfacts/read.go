package rrfacts

import (
	"context"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/decision"
)

// readPage is the page size of a consistent read.
const readPage = 500

// ReadKey reads, as of now, the facts of the objects of one key in one namespace: a List without
// a resourceVersion is served from etcd, and the pages of one List from one snapshot, so it never
// rests on a view that lags a committed create. How it selects is the policy's Read (see
// ReadMode): by the key's field where the API server serves that selector, by the key's labels,
// or the whole namespace; every object listed is judged as the index judges it, and only the
// key's are kept.
func (ix *Index) ReadKey(ctx context.Context, namespace, keyHex, key string) ([]decision.Fact, error) {
	opts := metav1.ListOptions{Limit: readPage}
	switch ix.ReadMode() {
	case v1alpha1.ReadFieldSelector:
		opts.FieldSelector = fields.OneTermEqualSelector(ix.o.Policy.KeyField, key).String()
	case v1alpha1.ReadLabelSelector:
		// By the key's label values where the key gives them back, else by the labels' presence.
		values, exact := ix.o.Policy.LabelValues(key)
		sel := labels.NewSelector()
		for _, k := range ix.o.Policy.LabelKeys {
			op, vals := selection.Exists, []string(nil)
			if exact {
				op, vals = selection.Equals, []string{values[k]}
			}
			r, err := labels.NewRequirement(k, op, vals)
			if err != nil {
				return nil, err
			}
			sel = sel.Add(*r)
		}
		opts.LabelSelector = sel.String()
	}
	var out []decision.Fact
	for {
		list := &objectList{rd: ix.rd}
		if err := ix.rc.Get().Namespace(namespace).Resource(ix.o.Policy.GroupResource.Resource).
			VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(list); err != nil {
			return nil, err
		}
		for i := range list.Items {
			if v := list.Items[i].verdict; v.keyHex == keyHex {
				out = append(out, v.fact)
			}
		}
		if opts.Continue = list.Continue; opts.Continue == "" {
			return out, nil
		}
	}
}

// ReadMode is how ReadKey selects: the policy's Read, but a namespace scan for a field the API
// server does not serve as a selector (Options.FieldSelectable).
func (ix *Index) ReadMode() v1alpha1.ConsistentRead {
	r := ix.o.Policy.Read
	if r == v1alpha1.ReadFieldSelector && !ix.o.FieldSelectable && !strings.HasPrefix(ix.o.Policy.KeyField, "metadata.") {
		return v1alpha1.ReadNamespaceScan
	}
	return r
}
