package policies

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rrguardv1 "github.com/rrguard/rrguard/apis/rrguard/v1alpha1"
	"github.com/rrguard/rrguard/internal/policy"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/webhook/serve"
)

// nameCandidate is an object's key (labels and annotations; nil: absent) and the name it arrives
// under after every mutating webhook.
type nameCandidate struct {
	key  *string
	name string
}

// With rrguard's webhooks out of the path, the ValidatingAdmissionPolicy a policy generates
// (NameCheckPolicy) admits exactly what the naming rule admits: for a SHA256 key, a name of the
// scheme's shape (ParseName); for a Hex key, a hex key and the scheme's name for it (OccurrenceFor);
// an object whose key is absent or empty passes unless the key is required. Each refusal is the API
// server's 422 naming the policy.
func TestNameCheckAgreesWithTheNamingRule(t *testing.T) {
	tekton := targets[0].policy(t)
	required := tekton.DeepCopy()
	required.Name, required.Spec.Key.Required = "tekton-required", true
	hexKeyed := tekton.DeepCopy()
	hexKeyed.Name = "tekton-hex"
	hexKeyed.Spec.Key = rrguardv1.Key{Expression: "object.metadata.annotations['example.com/fingerprint']",
		Encoding: rrguardv1.KeyHex, NamePrefix: "fp-"}
	for _, p := range []*rrguardv1.UniquenessPolicy{tekton, required, hexKeyed} {
		t.Run(p.Name, func(t *testing.T) {
			ctx, ns := env.TestNamespace(t, "namecheck", 2*time.Minute)
			c, err := policy.Compile(p, "")
			if err != nil {
				t.Fatal(err)
			}
			vap, bind := c.NameCheckPolicy("test-"+p.Name, &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}})
			for _, o := range []client.Object{vap, bind} {
				if err := env.Client.Create(ctx, o); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = env.Client.Delete(context.Background(), o) })
			}
			hexKey := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
			keyOf := func(s string) string { // the key's hex form, as the engine computes it
				if p.Spec.Key.Encoding == rrguardv1.KeyHex {
					return s
				}
				return rules.HashKey(s)
			}
			mine, other := "shop/main", "shop/other"
			if p.Spec.Key.Encoding == rrguardv1.KeyHex {
				mine, other = hexKey("mine"), hexKey("other")
			}
			prefix := p.Spec.Key.NamePrefix
			k32 := keyOf(mine)[:rules.KeyLen]
			notHex, empty := "not-hex", ""
			candidates := []nameCandidate{
				{&mine, rules.NameFor(prefix, keyOf(mine), 1)}, {&mine, rules.NameFor(prefix, keyOf(mine), 42)},
				{&mine, prefix + k32 + "-9223372036854775807"}, {&mine, prefix + k32 + "-9223372036854775808"},
				{&mine, prefix + k32 + "-0"}, {&mine, prefix + k32 + "-07"}, {&mine, prefix + k32 + "-1x"},
				{&mine, prefix + strings.ToUpper(k32) + "-1"}, {&mine, "run-abc"}, {&mine, prefix + k32 + "-1-x"},
				{&mine, rules.NameFor(prefix, keyOf(other), 3)},
				{nil, "run-abc"},
			}
			if p.Spec.Key.Encoding == rrguardv1.KeyHex {
				// (Two empty labels make the key "/", not an empty one.)
				candidates = append(candidates, nameCandidate{&notHex, rules.NameFor(prefix, rules.HashKey(notHex), 1)}, nameCandidate{&empty, "run-abc"})
			}
			// What the engine admits: a key absent or empty is left alone unless required; a Hex key
			// must be hex and the name its scheme's; a SHA256 key's name is checked for its shape.
			admits := func(cd nameCandidate) bool {
				switch {
				case cd.key == nil || *cd.key == "":
					return !p.Spec.Key.Required
				case p.Spec.Key.Encoding == rrguardv1.KeyHex:
					_, ok := rules.OccurrenceFor(prefix, *cd.key, cd.name)
					return rules.ValidFingerprint(*cd.key) && ok
				default:
					_, _, ok := rules.ParseName(prefix, cd.name)
					return ok
				}
			}
			create := func(cd nameCandidate) error {
				u := targets[0].object(ns)
				u.SetGenerateName("")
				u.SetName(cd.name)
				u.SetLabels(nil)
				if cd.key != nil {
					if p.Spec.Key.Encoding == rrguardv1.KeyHex {
						u.SetAnnotations(map[string]string{"example.com/fingerprint": *cd.key})
					} else {
						repo, branch, _ := strings.Cut(*cd.key, "/")
						u.SetLabels(map[string]string{"ci.example.com/repo": repo, "ci.example.com/branch": branch})
					}
				}
				return env.Client.Create(ctx, u, client.DryRunAll)
			}
			// The API server loads the policy a moment after it is written.
			var last error
			if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
				last = create(nameCandidate{&mine, "run-abc"})
				return apierrors.IsInvalid(last), nil
			}); err != nil {
				t.Fatalf("the generated policy never refused a foreign name: %v (last: %v)", err, last)
			}
			if !strings.Contains(last.Error(), "of policy "+p.Name) {
				t.Fatalf("the refusal does not name the policy: %v", last)
			}
			admitted := 0
			for _, cd := range candidates {
				err := create(cd)
				key := "absent"
				if cd.key != nil {
					key = *cd.key
				}
				switch want := admits(cd); {
				case want && err != nil:
					t.Errorf("key %q, name %s: the engine admits it, the API server refused: %v", key, cd.name, err)
				case !want && err == nil:
					t.Errorf("key %q, name %s: the engine refuses it, the API server admitted it", key, cd.name)
				case !want && !apierrors.IsInvalid(err):
					t.Errorf("key %q, name %s: refused, but not as 422 Invalid: %v", key, cd.name, err)
				case want:
					admitted++
				}
			}
			if admitted == 0 || admitted == len(candidates) {
				t.Fatalf("%d of %d candidates admitted: the candidates do not tell a check from none", admitted, len(candidates))
			}
		})
	}
}

// A cluster policy's names are checked by the API server by default: rrguard writes its
// ValidatingAdmissionPolicy and binding, owned by the policies' MutatingWebhookConfiguration, and no
// validating webhook, so a create costs one call to rrguard. nameCheck: Webhook swaps the two, and
// a deleted policy leaves neither.
func TestNameCheckFollowsThePolicy(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "namecheck-life", 3*time.Minute)
	serving(ctx, t, func(o *serve.Options) { o.Policies = nil })
	tg := targets[0]
	p := lifePolicy(t, "namecheck-pipelineruns", ns)
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "Enforced", enforceWithin)
	waitCondition(ctx, t, p.Name, rrguardv1.ConditionNameChecked, metav1.ConditionTrue, serve.ReasonNameCheckAPIServer, enforceWithin)
	checkName := policy.GeneratedName(p.Name)
	awaitChecks(ctx, t, checkName, true, false)
	var vap admissionregistrationv1.ValidatingAdmissionPolicy
	var mut admissionregistrationv1.MutatingWebhookConfiguration
	if err := env.Client.Get(ctx, client.ObjectKey{Name: checkName}, &vap); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &mut); err != nil {
		t.Fatal(err)
	}
	if len(vap.OwnerReferences) != 1 || vap.OwnerReferences[0].UID != mut.UID || vap.Labels[policy.NameCheckPolicyLabel] != p.Name {
		t.Fatalf("the name check is not owned by %s (uid %s) or not labelled: %+v %v", mut.Name, mut.UID, vap.OwnerReferences, vap.Labels)
	}
	// Judged and admitted through the check; an object without the key unchanged.
	u := createNext(ctx, t, tg, ns)
	if u.GetName() != tg.name(1) {
		t.Fatalf("created %s, want %s", u.GetName(), tg.name(1))
	}
	plain := tg.object(ns)
	plain.SetLabels(nil)
	plain.SetGenerateName("")
	plain.SetName("no-key")
	if err := env.Client.Create(ctx, plain); err != nil || plain.GetName() != "no-key" {
		t.Fatalf("an object without the key: %v, stored as %s", err, plain.GetName())
	}

	setNameCheck := func(nc rrguardv1.NameCheck) {
		t.Helper()
		if err := retryConflict(func() error {
			var cur rrguardv1.UniquenessPolicy
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
				return err
			}
			cur.Spec.NameCheck = nc
			return env.Client.Update(ctx, &cur)
		}); err != nil {
			t.Fatal(err)
		}
	}
	setNameCheck(rrguardv1.NameCheckWebhook)
	awaitChecks(ctx, t, checkName, false, true)
	waitCondition(ctx, t, p.Name, rrguardv1.ConditionNameChecked, metav1.ConditionTrue, serve.ReasonNameCheckWebhook, enforceWithin)
	setNameCheck(rrguardv1.NameCheckAPIServer)
	awaitChecks(ctx, t, checkName, true, false)
	if err := env.Client.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	awaitChecks(ctx, t, checkName, false, false)
}

// A name check the API server refuses is reported in the policy's status (NameChecked false, with
// the API server's answer), and nothing of it is left; the policy still names, and every other
// write goes on. The refusal is injected at the replica's transport: the API server refuses a
// ValidatingAdmissionPolicy rrguard's compiler accepts only for expressions its own CEL does not
// know, which differ by release.
func TestNameCheckRefusedIsReported(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "namecheck-refused", 3*time.Minute)
	p := lifePolicy(t, "refused-pipelineruns", ns)
	refuse := &refuseWrites{resource: "validatingadmissionpolicies", name: policy.GeneratedName(p.Name)}
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { refuse.next = rt; return refuse })
	stop, err := env.ServeRRGuardWith(ctx, cfg, func(o *serve.Options) { o.Policies = nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop() })
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), p) })
	waitCondition(ctx, t, p.Name, rrguardv1.ConditionEnforced, metav1.ConditionTrue, "Enforced", enforceWithin)
	st := waitCondition(ctx, t, p.Name, rrguardv1.ConditionNameChecked, metav1.ConditionFalse, serve.ReasonNameCheckRefused, enforceWithin)
	if refuse.hits.Load() == 0 {
		t.Fatal("the fault never hit: no write of the name check was refused")
	}
	if c := meta.FindStatusCondition(st.Conditions, rrguardv1.ConditionNameChecked); !strings.Contains(c.Message, refusedMessage) {
		t.Fatalf("NameChecked does not carry the API server's answer: %+v", c)
	}
	awaitChecks(ctx, t, policy.GeneratedName(p.Name), false, false)
	if u := createNext(ctx, t, targets[0], ns); u.GetName() != targets[0].name(1) {
		t.Fatalf("created %s, want %s: the policy names without its check", u.GetName(), targets[0].name(1))
	}
}

// refusedMessage is what refuseWrites answers.
const refusedMessage = "refused by the test's transport"

// refuseWrites answers every create or update of the named object of resource with the API
// server's 422, counting them.
type refuseWrites struct {
	resource, name string
	next           http.RoundTripper
	hits           atomic.Int64
}

func (r *refuseWrites) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Method == http.MethodPost || req.Method == http.MethodPut) && strings.Contains(req.URL.Path, "/"+r.resource) && req.Body != nil {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		// Its name, in whichever encoding the client speaks (JSON or protobuf).
		if bytes.Contains(body, []byte(r.name)) {
			r.hits.Add(1)
			st := apierrors.NewInvalid(schema.GroupKind{Group: "admissionregistration.k8s.io", Kind: "ValidatingAdmissionPolicy"}, r.name,
				field.ErrorList{field.Invalid(field.NewPath("spec", "variables").Index(0).Child("expression"), "", refusedMessage)}).Status()
			st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
			status, err := json.Marshal(st)
			if err != nil {
				return nil, err
			}
			return &http.Response{StatusCode: http.StatusUnprocessableEntity, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(bytes.NewReader(status)), Request: req}, nil
		}
	}
	return r.next.RoundTrip(req)
}

// awaitChecks waits until the policy's generated ValidatingAdmissionPolicy and binding exist or not
// (vap), and rrguard's validating webhook for it exists or not (webhook).
func awaitChecks(ctx context.Context, t *testing.T, name string, vap, webhook bool) {
	t.Helper()
	var state string
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, enforceWithin, true, func(ctx context.Context) (bool, error) {
		p := env.Client.Get(ctx, client.ObjectKey{Name: name}, &admissionregistrationv1.ValidatingAdmissionPolicy{})
		b := env.Client.Get(ctx, client.ObjectKey{Name: name}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{})
		var val admissionregistrationv1.ValidatingWebhookConfiguration
		if err := env.Client.Get(ctx, client.ObjectKey{Name: serve.PoliciesWebhookConfiguration}, &val); client.IgnoreNotFound(err) != nil {
			return false, err
		}
		hook := slices.ContainsFunc(val.Webhooks, func(w admissionregistrationv1.ValidatingWebhook) bool { return w.Name == name })
		state = "policy: " + errState(p) + ", binding: " + errState(b)
		return (p == nil) == vap && (b == nil) == vap && apierrors.IsNotFound(p) == !vap && apierrors.IsNotFound(b) == !vap && hook == webhook, nil
	}); err != nil {
		t.Fatalf("want the name check written %v and the validating webhook %v: %s: %v", vap, webhook, state, err)
	}
}

func errState(err error) string {
	if err == nil {
		return "present"
	}
	return err.Error()
}
