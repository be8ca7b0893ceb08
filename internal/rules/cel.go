package rules

import (
	"fmt"
	"strconv"
)

// The naming rule once more, as CEL, so the API server itself refuses a create whose final name is
// not the scheme's, with no call to rrguard: the RR's ValidatingAdmissionPolicy in config/policy,
// and the one rrguard generates for each policy (policy.Compiled.NameCheckPolicy). The patterns are
// constants of the policy, compiled once with it, never per request.
// TestPolicyAgreesWithTheNamingRule checks that the API server's verdict equals Occurrence's, and
// that config/policy carries these exact expressions.
const (
	// FingerprintCEL holds when ValidFingerprint does.
	FingerprintCEL = `object.spec.signalFingerprint.matches('^[a-f0-9]{64}$')`
	// NameCEL is NameCELFor(RRNamePrefix, "object.spec.signalFingerprint"), written out as
	// config/policy carries it.
	NameCEL = `object.metadata.name.matches('^rr-[a-f0-9]{32}-[1-9][0-9]{0,18}$') && ` +
		`object.metadata.name.substring(3, 35) == object.spec.signalFingerprint.substring(0, 32) && ` +
		`(size(object.metadata.name) < 55 || object.metadata.name.substring(36) <= '9223372036854775807')`
)

// maxNumberDigits is how many digits the largest int64 has: a number of that many is compared with
// it as a string.
const maxNumberDigits = 19

// NameCELFor holds when OccurrenceFor(prefix, key, object.metadata.name) finds a number, where
// keyHex is CEL giving the key's hex form: prefix, the first KeyLen characters of the key, "-", and
// a decimal int64 above 0 without leading zeros. prefix is a policy's namePrefix (letters, digits,
// "-": nothing a regular expression or a CEL string treats specially).
func NameCELFor(prefix, keyHex string) string {
	return fmt.Sprintf(`%s && object.metadata.name.substring(%d, %d) == %s.substring(0, %d) && %s`,
		nameMatches(prefix), len(prefix), len(prefix)+KeyLen, keyHex, KeyLen, numberFits(prefix))
}

// NameShapeCEL holds when ParseName(prefix, object.metadata.name) succeeds: a name of the scheme for
// some key, whichever.
func NameShapeCEL(prefix string) string {
	return nameMatches(prefix) + " && " + numberFits(prefix)
}

func nameMatches(prefix string) string {
	return fmt.Sprintf(`object.metadata.name.matches('^%s[a-f0-9]{%d}-[1-9][0-9]{0,%d}$')`, prefix, KeyLen, maxNumberDigits-1)
}

func numberFits(prefix string) string {
	number := len(prefix) + KeyLen + 1
	return fmt.Sprintf(`(size(object.metadata.name) < %d || object.metadata.name.substring(%d) <= '%s')`,
		number+maxNumberDigits, number, strconv.FormatInt(1<<63-1, 10))
}
