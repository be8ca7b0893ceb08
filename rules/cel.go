package rules

// The naming rule once more, as CEL for the ValidatingAdmissionPolicy in config/policy, so the
// API server itself refuses a create whose final name is not the scheme's, with no call to
// rrguard. The patterns are constants, compiled once with the policy, never per request.
// TestPolicyAgreesWithTheNamingRule checks that the API server's verdict equals Occurrence's, and
// that config/policy carries these exact expressions.
const (
	// FingerprintCEL holds when ValidFingerprint does.
	FingerprintCEL = `object.spec.signalFingerprint.matches('^[a-f0-9]{64}$')`
	// NameCEL holds when Occurrence finds a number: "rr-", the first KeyLen characters of the
	// fingerprint, "-", and a decimal int64 above 0 without leading zeros (19 digits at most; a
	// 19-digit one compared as a string with the largest int64).
	NameCEL = `object.metadata.name.matches('^rr-[a-f0-9]{32}-[1-9][0-9]{0,18}$') && ` +
		`object.metadata.name.substring(3, 35) == object.spec.signalFingerprint.substring(0, 32) && ` +
		`(size(object.metadata.name) < 55 || object.metadata.name.substring(36) <= '9223372036854775807')`
)
