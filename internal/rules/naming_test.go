package rules

import "testing"

// The RR's name check in config/policy is the general one for its prefix and key.
func TestNameCELIsTheGeneralRule(t *testing.T) {
	if got := NameCELFor(RRNamePrefix, "object.spec.signalFingerprint"); got != NameCEL {
		t.Fatalf("NameCELFor gives\n%s\nconfig/policy carries\n%s", got, NameCEL)
	}
}
