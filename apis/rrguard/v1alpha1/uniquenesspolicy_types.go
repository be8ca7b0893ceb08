package v1alpha1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// UniquenessPolicySpec declares "at most one in flight per key" for one resource.
type UniquenessPolicySpec struct {
	// Target is the resource whose creates are judged.
	Target Target `json:"target"`

	// MatchConditions, as an admission webhook's: every one must be true of the new object for
	// the policy to judge it; a create that fails one is left alone (e.g. Jobs a CronJob owns).
	// Each is CEL over `object`.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	MatchConditions []MatchCondition `json:"matchConditions,omitempty"`

	// Key is what at most one object in flight may share.
	Key Key `json:"key"`

	// InFlight is CEL over `object` giving whether the object is in flight: a bool, or a
	// timestamp up to which it is (for a rule that ends at a time, such as a cooldown; a time in
	// year 9999 or later means "until the object changes"). It is
	// evaluated when the object changes, never per create, so it must not depend on the clock;
	// the engine compares a timestamp with the time of each create. An object being deleted is
	// never in flight.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	InFlight string `json:"inFlight"`

	// Phase, optional, is CEL over `object` giving a string shown in a refused create's message
	// (the RR's overallPhase); "new" when empty.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Phase string `json:"phase,omitempty"`

	// NamesForLife keeps a key's occurrence numbers from being issued twice after its objects are
	// deleted (rrguard's marks and its finalizer). On by default.
	// +optional
	// +kubebuilder:default=true
	NamesForLife *bool `json:"namesForLife,omitempty"`

	// Message leads the answer to a refused create: the details name the object in flight, and
	// the message goes on ": <resource> <namespace>/<name> (phase <phase>); <hint>".
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`

	// Hint ends the answer to a refused create (what the creator should do instead).
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Hint string `json:"hint,omitempty"`

	// NameCheck is where a new object's final name is checked against its key, after every
	// mutating webhook (one that renamed the object after rrguard would store a second object of
	// a key under a name of its own): APIServer (default), by a ValidatingAdmissionPolicy rrguard
	// writes for the policy, with no call to rrguard; or Webhook, by rrguard's validating webhook,
	// a second call per create. For a SHA256 key the API server checks the name's shape and that
	// the key is present (CEL has no SHA-256); the webhook checks the hash too.
	// +optional
	// +kubebuilder:default=APIServer
	NameCheck NameCheck `json:"nameCheck,omitempty"`

	// Concurrency is what a create of a key that has one in flight gets: Forbid (the default, a
	// 409 naming it), or Queue and Replace, which store every create held and release them by
	// key. Absent is Forbid.
	// +optional
	Concurrency *Concurrency `json:"concurrency,omitempty"`
}

// ConcurrencyMode is what a create of a key with one in flight gets.
// +kubebuilder:validation:Enum=Forbid;Queue;Replace
type ConcurrencyMode string

const (
	// Forbid refuses it: 409 AlreadyExists naming the object in flight. Objects are named by the
	// key (spec.key.namePrefix).
	Forbid ConcurrencyMode = "Forbid"
	// Queue stores it held; the key's held objects are released one at a time (up to
	// maxInFlight), oldest first, as the ones in flight end. Objects keep their creators' names.
	Queue ConcurrencyMode = "Queue"
	// Replace stores it held and cancels every older object of the key, held or in flight; the
	// newest is released once the ones it replaced have ended (see waitForEnd).
	Replace ConcurrencyMode = "Replace"
)

// Concurrency declares how a target is held, released and cancelled: rrguard applies these
// patches and never guesses them.
// +kubebuilder:validation:XValidation:rule="self.mode == 'Forbid' || (has(self.hold) && has(self.release))",message="Queue and Replace need hold and release"
// +kubebuilder:validation:XValidation:rule="self.mode != 'Replace' || has(self.cancel)",message="Replace needs cancel"
type Concurrency struct {
	// +kubebuilder:default=Forbid
	Mode ConcurrencyMode `json:"mode"`
	// MaxInFlight is how many released objects of one key may be in flight at once (Queue).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	MaxInFlight int32 `json:"maxInFlight,omitempty"`
	// Hold is applied to every create at admission, with rrguard's annotations: JSON patch
	// operations (RFC 6902) that stop the target from running (a Job's spec.suspend, a
	// PipelineRun's spec.status PipelineRunPending).
	// +optional
	// +kubebuilder:validation:MaxItems=8
	Hold []PatchOperation `json:"hold,omitempty"`
	// Release lets a held object run: applied with a test that rrguard still holds it.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	Release []PatchOperation `json:"release,omitempty"`
	// Cancel ends an older object of the key under Replace.
	// +optional
	Cancel *Cancel `json:"cancel,omitempty"`
	// CancelHeld ends an older object that is still held (under Replace); absent, Cancel does.
	// Some targets ignore a cancel while held (an Argo Workflow ignores shutdown while
	// suspended).
	// +optional
	CancelHeld *Cancel `json:"cancelHeld,omitempty"`
	// UserHeld is CEL over `object`: true while the object is held (a PipelineRun pending, a Job
	// suspended). A create it is true for was held by its creator: rrguard leaves it alone and
	// never releases it. An object rrguard holds that it gives false for was started by someone
	// else (the hold lifted by hand): rrguard counts it as released. It must therefore be true
	// of what the hold patch makes. Without it, a hold lifted by hand cannot be told, and the
	// release of such an object fails until its key is drained by hand.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	UserHeld string `json:"userHeld,omitempty"`
	// WaitForEnd (Replace): release the newest only once every object it cancelled has left
	// flight (true, the default); false releases it as soon as the cancels are written, so a
	// cancelled object may still be winding down while the newest runs.
	// +optional
	WaitForEnd *bool `json:"waitForEnd,omitempty"`
	// StallAfter is how long a key's queue may go without a release, while it holds objects,
	// before rrguard counts it stalled (rrguard_queue_stalled_keys, the RRGuardQueueStalled
	// alert); 1h by default. Set it above the longest run you expect.
	// +optional
	StallAfter *metav1.Duration `json:"stallAfter,omitempty"`
}

// PatchOperation is one JSON patch operation (RFC 6902): add, remove, replace or test.
type PatchOperation struct {
	// +kubebuilder:validation:Enum=add;remove;replace;test
	Op string `json:"op"`
	// Path is a JSON pointer into the object; never into metadata.name, metadata.namespace or
	// rrguard's annotations.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Path string `json:"path"`
	// Value, for add, replace and test.
	// +optional
	Value *apiextensionsv1.JSON `json:"value,omitempty"`
}

// Cancel is how an older object is cancelled: a patch, or its deletion.
// +kubebuilder:validation:XValidation:rule="has(self.patch) != (has(self.delete) && self.delete)",message="exactly one of patch and delete"
type Cancel struct {
	// +optional
	// +kubebuilder:validation:MaxItems=8
	Patch []PatchOperation `json:"patch,omitempty"`
	// Delete deletes the object (background propagation).
	// +optional
	Delete bool `json:"delete,omitempty"`
}

// NameCheck says who checks a new object's final name.
// +kubebuilder:validation:Enum=APIServer;Webhook
type NameCheck string

const (
	// NameCheckAPIServer: a ValidatingAdmissionPolicy rrguard generates for the policy.
	NameCheckAPIServer NameCheck = "APIServer"
	// NameCheckWebhook: rrguard's validating webhook.
	NameCheckWebhook NameCheck = "Webhook"
)

// Target names a resource as a webhook rule does.
type Target struct {
	// Group is the API group; "" for the core group.
	// +optional
	Group string `json:"group,omitempty"`
	// Versions the policy judges; the key and rules read the object as the API server sends it
	// in the version requested.
	// +kubebuilder:validation:MinItems=1
	Versions []string `json:"versions"`
	// Resource is the plural resource name (as in a webhook rule), no subresource.
	// +kubebuilder:validation:MinLength=1
	Resource string `json:"resource"`
	// Namespaces judged; empty: every namespace but those rrguard never judges.
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
}

// MatchCondition is a named CEL condition.
type MatchCondition struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Expression string `json:"expression"`
}

// KeyEncoding says how a key becomes part of a name.
// +kubebuilder:validation:Enum=Hex;SHA256
type KeyEncoding string

const (
	// KeyHex: the key is already a lowercase hex SHA-256 (64 characters, as the RR
	// fingerprint); its first 32 characters go into the name as they are.
	KeyHex KeyEncoding = "Hex"
	// KeySHA256: the key is any non-empty string; the first 32 hex characters of its SHA-256 go
	// into the name.
	KeySHA256 KeyEncoding = "SHA256"
)

// Key is the uniqueness key and the names made from it.
type Key struct {
	// Expression is CEL over `object` giving the key, a string. An object whose key is absent (a
	// field, label or list element the expression reads is missing, or it gives "") is not the
	// policy's unless Required: a create is left alone, unchanged. Any other failure (a wrong
	// type, a Hex key that is not hex) refuses the create (422).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Expression string `json:"expression"`
	// Required refuses (422) a create whose key is absent, naming the policy and the field,
	// instead of leaving it alone: for a resource whose every object must have a key (the RR's
	// fingerprint). Objects a match condition excludes are still left alone.
	// +optional
	Required bool `json:"required,omitempty"`
	// Encoding: Hex or SHA256 (default).
	// +optional
	// +kubebuilder:default=SHA256
	Encoding KeyEncoding `json:"encoding,omitempty"`
	// NamePrefix starts every name: <namePrefix><32 hex characters>-<n>. Lowercase letters,
	// digits and "-", starting with a letter, at most 11 characters, so that a name fits in 63.
	// +kubebuilder:validation:Pattern=`^[a-z][-a-z0-9]{0,10}$`
	NamePrefix string `json:"namePrefix"`
}

// Condition types a policy's status carries.
const (
	// ConditionCompiled: every expression compiled, within the cost budget.
	ConditionCompiled = "Compiled"
	// ConditionWatching: rrguard watches the target and its index has synced.
	ConditionWatching = "Watching"
	// ConditionEnforced: creates of the target are judged.
	ConditionEnforced = "Enforced"
	// ConditionNameChecked: every new object's final name is checked after every mutation, by the
	// API server (the generated ValidatingAdmissionPolicy) or rrguard's validating webhook, as
	// spec.nameCheck says; false with the API server's answer when it refused the generated check.
	ConditionNameChecked = "NameChecked"
)

// ConsistentRead says how a decision reads the target when its index cannot vouch for itself.
type ConsistentRead string

const (
	// ReadFieldSelector lists the key's objects by a selectable field (the RR's fingerprint).
	ReadFieldSelector ConsistentRead = "FieldSelector"
	// ReadLabelSelector lists them by label selector: the key is made of labels.
	ReadLabelSelector ConsistentRead = "LabelSelector"
	// ReadNamespaceScan lists the namespace in pages and keeps the key's objects.
	ReadNamespaceScan ConsistentRead = "NamespaceScan"
)

// UniquenessPolicyStatus is what rrguard reports of a policy.
type UniquenessPolicyStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ConsistentRead is how a decision reads the target when the index cannot vouch for itself.
	// +optional
	ConsistentRead ConsistentRead `json:"consistentRead,omitempty"`
	// Objects is the number of objects of the target in the index.
	// +optional
	Objects int64 `json:"objects,omitempty"`
}

// UniquenessPolicy keeps at most one object in flight per key for one resource.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=up
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Resource",type=string,JSONPath=`.spec.target.resource`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.concurrency.mode`
// +kubebuilder:printcolumn:name="Compiled",type=string,JSONPath=`.status.conditions[?(@.type=="Compiled")].status`
// +kubebuilder:printcolumn:name="Enforced",type=string,JSONPath=`.status.conditions[?(@.type=="Enforced")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Enforced")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type UniquenessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec UniquenessPolicySpec `json:"spec"`
	// +optional
	Status UniquenessPolicyStatus `json:"status,omitempty"`
}

// UniquenessPolicyList lists UniquenessPolicies.
//
// +kubebuilder:object:root=true
type UniquenessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []UniquenessPolicy `json:"items"`
}
