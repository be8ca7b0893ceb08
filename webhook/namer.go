package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Namer is the mutating webhook: it gives each new RR the scheme's name, or refuses it as a
// duplicate of the RR in flight.
type Namer struct {
	Lister Lister
	Now    func() time.Time // time.Now when nil
}

var _ admission.Handler = (*Namer)(nil)

// Handle implements admission.Handler.
func (h *Namer) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, decision := h.handle(ctx, req)
	if decision != "" {
		decisions.WithLabelValues(webhookName, decision).Inc()
	}
	duration.WithLabelValues(webhookName).Observe(time.Since(start).Seconds())
	return resp
}

func (h *Namer) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	rr, skip, err := decodeCreate(req)
	if skip {
		return admission.Allowed("not a create"), ""
	}
	if err == nil {
		// Refuse a bad fingerprint before spending an API read on it.
		err = ValidateFingerprint(rr)
	}
	applied := err == nil && appliedCreate(req, rr)
	if applied && rr.Name != req.Name {
		// Reinvoked after another mutating webhook renamed an apply.
		err = renamedApply(rr, req.Name)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}

	readStart := time.Now()
	existing, err := h.Lister.ListByFingerprint(ctx, req.Namespace, rr.Spec.SignalFingerprint)
	readDuration.Observe(time.Since(readStart).Seconds())
	if err != nil {
		// Not the client's fault, and worth a retry: 503, never a guess.
		return deny(apierrors.NewServiceUnavailable(fmt.Sprintf(
			"rrguard could not read the RemediationRequests of this fingerprint: %v", err))), DecisionError
	}

	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	name, err := Decide(rr, existing, now())
	if err == nil && applied && rr.Name != name {
		err = applyRefused(rr, name)
	}
	if err != nil {
		return deny(err), decisionOf(err)
	}
	if applied {
		// Already the scheme's name, and the key it will be stored under: as unique as a POST.
		return admission.Allowed("applied under the scheme's name " + name), DecisionCreated
	}
	return admission.Patched("named "+name, renamePatch(req.Object.Raw, name, rr.GenerateName != "")...), DecisionCreated
}

// renamePatch sets metadata.name and drops metadata.generateName. "add" replaces a member that
// exists, so it serves whether or not the client sent a name.
func renamePatch(raw []byte, name string, hasGenerateName bool) []jsonpatch.JsonPatchOperation {
	var probe struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if json.Unmarshal(raw, &probe) == nil && len(probe.Metadata) == 0 {
		return []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata", Value: map[string]any{"name": name}}}
	}
	ops := []jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/metadata/name", Value: name}}
	if hasGenerateName {
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "remove", Path: "/metadata/generateName"})
	}
	return ops
}
