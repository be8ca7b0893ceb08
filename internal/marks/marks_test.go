package marks

import "testing"

// Policies share the shards: each store reads, raises and collects only its own scope's entries,
// and the RR's keep the format they always had.
func TestScopes(t *testing.T) {
	const fp = "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea"
	if ScopeOf("kubernaut.ai", "remediationrequests") != "" || ScopeOf("", "pods") != "pods.core" {
		t.Fatalf("scopes %q %q", ScopeOf("kubernaut.ai", "remediationrequests"), ScopeOf("", "pods"))
	}
	stores := []Store{{}, {Scope: ScopeOf("batch", "jobs")}, {Scope: ScopeOf("argoproj.io", "workflows")}}
	keys := []string{"ci." + fp[:32], "ci.jobs.batch." + fp[:32], "ci.workflows.argoproj.io." + fp[:32]}
	for i, s := range stores {
		if got := s.EntryKey("ci", fp); got != keys[i] {
			t.Errorf("scope %q: entry %q, want %q", s.Scope, got, keys[i])
		}
		for j, k := range keys {
			if s.owns(k) != (i == j) {
				t.Errorf("scope %q owns %q: %v", s.Scope, k, s.owns(k))
			}
		}
	}
}
