// Package policies holds the UniquenessPolicies rrguard ships: config/ and the chart install these
// files, and the binary embeds them, so the RR policy a replica enforces is byte for byte the one
// reviewed here.
package policies

import _ "embed"

// RemediationRequests is the RR policy (remediationrequests.yaml).
//
//go:embed remediationrequests.yaml
var RemediationRequests []byte
