package webhook

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

// The policy shipped in config/policy carries the naming rule's CEL verbatim, and with rrguard's
// webhook out of the path the API server itself refuses exactly the names rules.Occurrence
// refuses: a create under a foreign name gets 422 from the API server, the scheme's is admitted.
func TestPolicyAgreesWithTheNamingRule(t *testing.T) {
	replaced(t)
	ctx, ns := env.TestNamespace(t, "policy", 2*time.Minute)
	if err := env.UseCheck(ctx, false); err != nil {
		t.Fatal(err)
	}
	p, bind, err := testenv.Policy(env.Root)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Spec.Validations) != 2 || p.Spec.Validations[0].Expression != rules.FingerprintCEL || p.Spec.Validations[1].Expression != rules.NameCEL {
		t.Fatalf("config/policy does not carry rules.FingerprintCEL and rules.NameCEL verbatim: %+v", p.Spec.Validations)
	}
	if bind.Spec.PolicyName != p.Name || len(bind.Spec.ValidationActions) != 1 || bind.Spec.ValidationActions[0] != "Deny" ||
		p.Spec.FailurePolicy == nil || *p.Spec.FailurePolicy != "Fail" {
		t.Fatalf("binding %+v, failurePolicy %v: want Deny, Fail", bind.Spec, p.Spec.FailurePolicy)
	}
	fp := testenv.Fingerprint(ns + "/policy")
	other := testenv.Fingerprint(ns + "/other")
	key := fp[:rules.KeyLen]
	candidates := []string{
		rules.Name(fp, 1), rules.Name(fp, 42), "rr-" + key + "-9223372036854775807",
		"rr-" + key + "-9223372036854775808", "rr-" + key + "-99999999999999999999", "rr-" + key + "-0",
		"rr-" + key + "-07", "rr-" + key + "-", "rr-" + key + "-1x", "rr-" + key + "-+1", "rr-" + key,
		rules.Name(other, 1), "rr-" + strings.ToUpper(key) + "-1", "rr-" + fp[:12] + "-3f9a2c1d",
		"gitops-a", "rr-" + key + "-1-x",
	}
	mutating := env.Environment().WebhookInstallOptions.MutatingWebhooks
	for _, m := range mutating {
		if err := env.Client.Delete(ctx, m.DeepCopy()); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, m := range mutating {
			c := m.DeepCopy()
			c.ResourceVersion = ""
			if err := env.Client.Create(context.Background(), c); err != nil {
				t.Fatal(err)
			}
		}
	}()
	create := func(name string) error {
		rr := testenv.NewRR(ns, fp)
		rr.GenerateName, rr.Name = "", name
		return env.Client.Create(ctx, rr, client.DryRunAll)
	}
	// The API server loads the policy and drops the webhook a moment after they are written.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = create("gitops-a")
		return apierrors.IsInvalid(last) && strings.Contains(last.Error(), "must be rr-<first 32 characters"), nil
	}); err != nil {
		t.Fatalf("the policy never refused a foreign name: %v (last: %v)", err, last)
	}
	for _, name := range candidates {
		err := create(name)
		_, ok := rules.Occurrence(fp, name)
		switch {
		case ok && err != nil:
			t.Errorf("%s: the naming rule admits it, the API server refused: %v", name, err)
		case !ok && err == nil:
			t.Errorf("%s: the naming rule refuses it, the API server admitted it", name)
		case !ok && !apierrors.IsInvalid(err):
			t.Errorf("%s: refused, but not as 422 Invalid: %v", name, err)
		}
	}
	// A real create under a foreign name, not a dry run: refused, nothing stored.
	rr := testenv.NewRR(ns, fp)
	rr.GenerateName, rr.Name = "", "gitops-b"
	if err := env.Client.Create(ctx, rr); !apierrors.IsInvalid(err) {
		t.Fatalf("create of gitops-b with rrguard out of the path: %v", err)
	}
	if items := list(ctx, t, ns); len(items) != 0 {
		t.Fatalf("stored %v", names(items))
	}
}
