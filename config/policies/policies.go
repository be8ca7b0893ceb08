// Package policies holds the UniquenessPolicies built into rrguard: config/ and the chart install
// these files, and the binary embeds them, so a built-in policy a replica enforces is byte for byte
// the one reviewed here. Each file is one policy, named as its file.
package policies

import "embed"

// Files holds the built-in policies, <name>.yaml each.
//
//go:embed *.yaml
var Files embed.FS
