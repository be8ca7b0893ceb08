package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/rrguard/rrguard/internal/policy"
)

// policyCmd is `rrguard policy test`: a policy file against object files, offline, as
// `kyverno test` and `gator verify` do for theirs. Exit 0 when the policy compiles (whatever the
// objects give), 1 when it does not, 2 for bad usage or unreadable files.
func policyCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "test" {
		fmt.Fprintln(stderr, "usage: rrguard policy test -f POLICY.yaml [--now RFC3339] [-o text|json] OBJECTS.yaml...")
		return 2
	}
	fs := flag.NewFlagSet("rrguard policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "the UniquenessPolicy file")
	nowFlag := fs.String("now", "", "the time of the creates, RFC 3339 (default: now)")
	ns := fs.String("rrguard-namespace", "rrguard-system", "rrguard's own namespace, which no policy may name")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *file == "" || fs.NArg() == 0 || (*output != "text" && *output != "json") {
		fmt.Fprintln(stderr, "rrguard policy test: -f POLICY.yaml and at least one objects file are required; -o is text or json")
		return 2
	}
	now := time.Now()
	if *nowFlag != "" {
		t, err := time.Parse(time.RFC3339, *nowFlag)
		if err != nil {
			fmt.Fprintf(stderr, "rrguard policy test: --now: %v\n", err)
			return 2
		}
		now = t
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		fmt.Fprintln(stderr, "rrguard policy test:", err)
		return 2
	}
	p, err := policy.ReadPolicy(b)
	if err != nil {
		fmt.Fprintf(stderr, "rrguard policy test: %s: %v\n", *file, err)
		return 2
	}
	c, err := policy.Compile(p, *ns)
	if err != nil {
		fmt.Fprintf(stdout, "policy %s is not enforceable: %v\n", p.Name, err)
		return 1
	}
	var objs []*unstructured.Unstructured
	for _, f := range fs.Args() {
		r, err := os.Open(f)
		if err != nil {
			fmt.Fprintln(stderr, "rrguard policy test:", err)
			return 2
		}
		got, err := policy.ReadObjects(r)
		_ = r.Close()
		if err != nil {
			fmt.Fprintf(stderr, "rrguard policy test: %s: %v\n", f, err)
			return 2
		}
		objs = append(objs, got...)
	}
	results := c.Simulate(context.Background(), objs, now)
	if *output == "json" {
		type row struct {
			Object, Key, KeyHex, Until, Name, Duplicate, Error    string
			Matched, Keyless, InFlight, UserHeld, Runs, Cancelled bool
			Held                                                  int `json:",omitempty"`
		}
		rows := make([]row, len(results))
		for i, r := range results {
			rows[i] = row{Object: r.Object, Key: r.Key, KeyHex: r.KeyHex, Until: r.Until, Name: r.Name, Duplicate: r.Duplicate,
				Matched: r.Matched, Keyless: r.Keyless, InFlight: r.InFlight, UserHeld: r.UserHeld, Runs: r.Runs, Cancelled: r.Cancelled, Held: r.Held}
			if r.Err != nil {
				rows[i].Error = r.Err.Error()
			}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rows)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "policy %s (%s, %s, consistent read: %s)\n", c.Policy, c.GroupResource, c.Mode(), c.Read)
	fmt.Fprintln(tw, "OBJECT\tKEY\tIN FLIGHT\tANSWER")
	for _, r := range results {
		inFlight := "no"
		switch {
		case r.Until != "":
			inFlight = "until " + r.Until
			if !r.InFlight {
				inFlight = "no (ended " + r.Until + ")"
			}
		case r.InFlight:
			inFlight = "yes"
		}
		answer := "named " + r.Name
		switch {
		case r.UserHeld:
			answer = "left alone (created held by its creator)"
		case !c.Names() && r.Err == nil && r.Matched && !r.Keyless:
			answer = queueAnswer(r)
		case !r.Matched && r.Err == nil:
			answer, inFlight = "left alone (a match condition is false)", "-"
		case r.Keyless:
			answer, inFlight = "left alone (no key; the policy does not require one)", "-"
		case r.Err != nil && r.Name == "":
			answer = "422: " + r.Err.Error()
		case r.Duplicate != "":
			answer = "409: duplicate of " + r.Duplicate + ", in flight"
		case r.Err != nil:
			answer += " (in-flight rule failed, counted in flight: " + r.Err.Error() + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Object, r.Key, inFlight, answer)
	}
	_ = tw.Flush()
	return 0
}

// queueAnswer is what a Queue or Replace policy does with a create, once every create of the
// file is in.
func queueAnswer(r policy.Result) string {
	switch {
	case r.Runs:
		return "held, then released: runs"
	case r.Cancelled:
		return "held, then cancelled by a newer one"
	case r.Held > 0:
		return fmt.Sprintf("held: %d in its key's queue", r.Held)
	}
	return "held"
}
