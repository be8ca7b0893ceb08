package serve

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The index decides only while the hold covers two request timeouts and the lag; otherwise the
// binary refuses to start, naming the three durations, unless told to decide from reads only.
func TestIndexSafety(t *testing.T) {
	for _, c := range []struct {
		name string
		o    Options
		safe bool
	}{
		{"defaults", Options{}, true},
		{"just over", Options{RequestTimeout: time.Second, IndexMaxLag: 4 * time.Second, ReleaseMinAge: 6*time.Second + time.Nanosecond}, true},
		{"equal", Options{RequestTimeout: time.Second, IndexMaxLag: 4 * time.Second, ReleaseMinAge: 6 * time.Second}, false},
		{"short hold", Options{ReleaseMinAge: time.Minute}, false},
		{"long lag", Options{IndexMaxLag: 2 * time.Minute}, false},
		{"short hold, reads only", Options{ReleaseMinAge: time.Minute, ConsistentListOnly: true}, true},
	} {
		err := c.o.IndexSafety()
		switch {
		case c.safe && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case !c.safe && !errors.Is(err, ErrIndexLagUnsafe):
			t.Errorf("%s: %v, want ErrIndexLagUnsafe", c.name, err)
		case !c.safe && !strings.Contains(err.Error(), "--release-min-age"):
			t.Errorf("%s: %v does not name the flags", c.name, err)
		}
	}
}
