package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// The naming rule. An RR's name is derived from its fingerprint and an occurrence number, so that
// two concurrent creates of one fingerprint carry the same name and the API server stores only one.
const (
	// RRNamePrefix starts every RR name (the RR policy's namePrefix).
	RRNamePrefix = "rr-"
	// KeyLen hex characters of the fingerprint (128 bits) keep names short enough for the child
	// objects Kubernaut derives from them: "rr-" + 32 + "-" + up to 19 digits stays under 63.
	KeyLen         = 32
	fingerprintLen = 64
)

// NameFor is the naming rule for any key: prefix, the first KeyLen characters of the key's hex
// form, "-", and the occurrence number. keyHex must be lowercase hex of KeyLen characters or more
// (HashKey's, or an RR's fingerprint).
func NameFor(prefix, keyHex string, n int64) string {
	return prefix + keyHex[:KeyLen] + "-" + strconv.FormatInt(n, 10)
}

// Name is the name the RR with the given fingerprint and occurrence number must carry.
// The fingerprint must have passed ValidFingerprint.
func Name(fingerprint string, n int64) string { return NameFor(RRNamePrefix, fingerprint, n) }

// HashKey is the hex form of a key that is not hex already: its SHA-256.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Occurrence returns n when name is the scheme's name for fingerprint, and false for any other
// name (a legacy RR's, or one whose number is not canonical, such as "07").
func Occurrence(fingerprint, name string) (int64, bool) {
	if !ValidFingerprint(fingerprint) {
		return 0, false
	}
	return OccurrenceFor(RRNamePrefix, fingerprint, name)
}

// OccurrenceFor is Occurrence for any key's prefix and hex form (as NameFor takes them).
func OccurrenceFor(prefix, keyHex, name string) (int64, bool) {
	if len(keyHex) < KeyLen {
		return 0, false
	}
	rest, ok := strings.CutPrefix(name, prefix+keyHex[:KeyLen]+"-")
	if !ok || rest == "" || rest[0] == '0' || len(rest) > 19 {
		return 0, false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return 0, false // ParseInt would take a sign
		}
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || n < 1 {
		return 0, false
	}
	return n, true
}

// ParseName reads a name made by NameFor with prefix back into the first KeyLen characters of
// its key's hex form and its number: what marks are keyed by, so an object can be covered by its
// mark from its metadata alone.
func ParseName(prefix, name string) (key string, n int64, ok bool) {
	rest, found := strings.CutPrefix(name, prefix)
	if !found || len(rest) < KeyLen+2 || !IsHex(rest[:KeyLen]) {
		return "", 0, false
	}
	key = rest[:KeyLen]
	n, ok = OccurrenceFor(prefix, key, name)
	return key, n, ok
}

// ValidFingerprint reports whether fp is a lowercase hex SHA-256, as Kubernaut's CRD requires.
func ValidFingerprint(fp string) bool { return len(fp) == fingerprintLen && IsHex(fp) }

// IsHex reports whether s is lowercase hex.
func IsHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
