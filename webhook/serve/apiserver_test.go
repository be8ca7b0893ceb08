package serve

import (
	"errors"
	"testing"
)

// The release gate: below the tested range rrguard refuses to start; above it, it runs untested.
func TestCheckRelease(t *testing.T) {
	for _, c := range []struct {
		v            string
		tested, fail bool
	}{
		{v: "v1.30.14", fail: true},
		{v: "v1.31.9", fail: true},
		{v: "v1.32.0", tested: true},
		{v: "v1.32.13", tested: true},
		{v: "v1.34.4-gke.1200", tested: true},
		{v: "v1.37.2", tested: true},
		{v: "v1.38.0"}, // newer than tested: runs, with a warning
		{v: "v2.0.0", fail: true},
		{v: "not-a-version", fail: true},
	} {
		tested, err := CheckRelease(c.v)
		switch {
		case c.fail && err == nil:
			t.Errorf("%s: accepted", c.v)
		case !c.fail && err != nil:
			t.Errorf("%s: %v", c.v, err)
		case tested != c.tested:
			t.Errorf("%s: tested %v", c.v, tested)
		}
	}
	if _, err := CheckRelease("v1.31.0"); !errors.Is(err, ErrUntestedRelease) {
		t.Fatalf("1.31: %v, want ErrUntestedRelease", err)
	}
}
