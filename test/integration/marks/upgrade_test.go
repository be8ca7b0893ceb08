package marks

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
	"github.com/rrguard/rrguard/internal/rules"
	"github.com/rrguard/rrguard/test/testenv"
)

// The upgrade to the policy engine: RRs and marks as the release before it stored them (the
// ConfigMap written here by hand, in that release's format, not through package marks), then the
// engine decides. It renames nothing, reissues no number, and answers a duplicate with the same
// 409: details and message as that release wrote them (its format string, copied here).
func TestUpgradeFromThePreEngineRelease(t *testing.T) {
	ctx, ns := env.TestNamespace(t, "upgrade", 3*time.Minute)
	marked, inFlight := testenv.Fingerprint(ns+"/marked"), testenv.Fingerprint(ns+"/in-flight")
	finished := testenv.NewRR(ns, marked)
	finished.GenerateName, finished.Name = "", rules.Name(marked, 3)
	flying := testenv.NewRR(ns, inFlight)
	flying.GenerateName, flying.Name = "", rules.Name(inFlight, 2)
	env.WithoutWebhooks(ctx, t, func() {
		// -4 to -7 of the marked fingerprint were deleted under the old release: its mark is 7.
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Namespace: testenv.MarksNamespace, Name: "rrguard-marks-" + marked[:3],
			Labels: map[string]string{"rrguard.kubernaut.ai/marks": "true"},
		}, Data: map[string]string{ns + "." + marked[:32]: fmt.Sprintf("7 %d", time.Now().Add(-time.Hour).Unix())}}
		if err := env.Client.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		} else if apierrors.IsAlreadyExists(err) {
			var cur corev1.ConfigMap
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(cm), &cur); err != nil {
				t.Fatal(err)
			}
			if cur.Data == nil {
				cur.Data = map[string]string{}
			}
			cur.Data[ns+"."+marked[:32]] = cm.Data[ns+"."+marked[:32]]
			if err := env.Client.Update(ctx, &cur); err != nil {
				t.Fatal(err)
			}
		}
		finished = createUnjudged(ctx, t, finished)
		flying = createUnjudged(ctx, t, flying)
	})
	complete(ctx, t, finished)
	serving(ctx, t)
	if err := env.WaitJudged(ctx, ns, true); err != nil {
		t.Fatal(err)
	}
	if rr := create(ctx, t, ns, marked); rr.Name != rules.Name(marked, 8) {
		t.Fatalf("after -3 and a mark of 7 written by the old release, the engine named %s, want %s", rr.Name, rules.Name(marked, 8))
	}
	err := env.Client.Create(ctx, testenv.NewRR(ns, inFlight))
	var st apierrors.APIStatus
	if !apierrors.IsAlreadyExists(err) || !errors.As(err, &st) {
		t.Fatalf("a repeat while %s is in flight: %v", flying.Name, err)
	}
	s := st.Status()
	want := fmt.Sprintf("a remediation of this signal is already in flight: RemediationRequest %s/%s (phase %s); record the repeat on it instead of creating another",
		ns, flying.Name, "new")
	if s.Code != 409 || s.Details == nil || s.Details.Name != flying.Name || s.Details.Group != v1alpha1.GroupVersion.Group ||
		s.Details.Kind != "remediationrequests" || !strings.HasSuffix(s.Message, want) {
		t.Fatalf("409 %+v\nwant details %s/%s named %s and a message ending %q", s, v1alpha1.GroupVersion.Group, "remediationrequests", flying.Name, want)
	}
}
