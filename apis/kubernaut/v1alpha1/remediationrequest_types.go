package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Phase is RemediationRequest.status.overallPhase. The in-flight rule that reads it lives in
// package webhook, not here, so that it exists in exactly one place.
// +kubebuilder:validation:Enum=Pending;Processing;Analyzing;AwaitingApproval;Executing;Verifying;Blocked;Completed;Failed;TimedOut;Skipped;Cancelled
type Phase string

// Phases Kubernaut's orchestrator writes.
const (
	PhasePending          Phase = "Pending"
	PhaseProcessing       Phase = "Processing"
	PhaseAnalyzing        Phase = "Analyzing"
	PhaseAwaitingApproval Phase = "AwaitingApproval"
	PhaseExecuting        Phase = "Executing"
	PhaseVerifying        Phase = "Verifying"
	PhaseBlocked          Phase = "Blocked"
	PhaseCompleted        Phase = "Completed"
	PhaseFailed           Phase = "Failed"
	PhaseTimedOut         Phase = "TimedOut"
	PhaseSkipped          Phase = "Skipped"
	PhaseCancelled        Phase = "Cancelled"
)

// Outcome is RemediationRequest.status.completionStatus.outcome.
// +kubebuilder:validation:Enum=Remediated;NoActionRequired;ManualReviewRequired;VerificationTimedOut;Inconclusive;DryRun
type Outcome string

// Outcomes Kubernaut's orchestrator writes.
const (
	OutcomeRemediated           Outcome = "Remediated"
	OutcomeNoActionRequired     Outcome = "NoActionRequired"
	OutcomeManualReviewRequired Outcome = "ManualReviewRequired"
	OutcomeVerificationTimedOut Outcome = "VerificationTimedOut"
	OutcomeInconclusive         Outcome = "Inconclusive"
	OutcomeDryRun               Outcome = "DryRun"
)

// TargetType names the platform a signal's target lives on.
// +kubebuilder:validation:Enum=kubernetes;aws;azure;gcp;datadog
type TargetType string

// RemediationRequestSpec is the signal that asks for a remediation. It never changes after
// creation.
type RemediationRequestSpec struct {
	// SignalFingerprint is the lowercase hex SHA-256 of the affected resource's top-level owner.
	// +required
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-f0-9]{64}$`
	SignalFingerprint string `json:"signalFingerprint"`

	// +required
	// +kubebuilder:validation:MaxLength=253
	SignalName string `json:"signalName"`

	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=50
	Severity string `json:"severity"`

	// +required
	SignalType string `json:"signalType"`

	// +optional
	// +kubebuilder:validation:MaxLength=63
	SignalSource string `json:"signalSource,omitempty"`

	// +required
	TargetType TargetType `json:"targetType"`

	// +required
	TargetResource ResourceIdentifier `json:"targetResource"`

	// +optional
	// +kubebuilder:validation:MaxLength=253
	ClusterID string `json:"clusterID,omitempty"`

	// +required
	FiringTime metav1.Time `json:"firingTime"`

	// +required
	ReceivedTime metav1.Time `json:"receivedTime"`

	// +optional
	SignalLabels map[string]string `json:"signalLabels,omitempty"`

	// +optional
	SignalAnnotations map[string]string `json:"signalAnnotations,omitempty"`

	// ProviderData is provider-specific JSON, kept as text.
	// +optional
	ProviderData string `json:"providerData,omitempty"`

	// OriginalPayload is the raw alert payload.
	// +optional
	OriginalPayload string `json:"originalPayload,omitempty"`
}

// ResourceIdentifier names the resource a signal is about.
type ResourceIdentifier struct {
	// +required
	Kind string `json:"kind"`
	// +required
	Name string `json:"name"`
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// +optional
	APIVersion string `json:"apiVersion,omitempty"`
}

// RemediationRequestStatus is written by Kubernaut's controllers; rrguard only reads it.
// Fields Kubernaut adds later are kept by the API server (preserve-unknown-fields).
// +kubebuilder:pruning:PreserveUnknownFields
type RemediationRequestStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	OverallPhase Phase `json:"overallPhase,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletedAt *metav1.Time `json:"completedAt,omitempty"`
	// +optional
	RetentionExpiryTime *metav1.Time `json:"retentionExpiryTime,omitempty"`
	// Deduplication is owned by the RR's creator (Gateway): it counts signals folded into this RR.
	// +optional
	Deduplication *DeduplicationStatus `json:"deduplication,omitempty"`
	// +optional
	CompletionStatus *CompletionStatus `json:"completionStatus,omitempty"`
	// +optional
	RoutingStatus *RoutingStatus `json:"routingStatus,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// DeduplicationStatus counts the signals that landed on one RR.
type DeduplicationStatus struct {
	// +optional
	FirstSeenAt *metav1.Time `json:"firstSeenAt,omitempty"`
	// +optional
	LastSeenAt *metav1.Time `json:"lastSeenAt,omitempty"`
	// +optional
	OccurrenceCount int32 `json:"occurrenceCount,omitempty"`
}

// CompletionStatus is how a remediation ended. Fields rrguard does not read are kept opaque.
// +kubebuilder:pruning:PreserveUnknownFields
type CompletionStatus struct {
	// +optional
	Outcome Outcome `json:"outcome,omitempty"`
	// +optional
	FailurePhase string `json:"failurePhase,omitempty"`
	// +optional
	FailureReason string `json:"failureReason,omitempty"`
}

// RoutingStatus is the orchestrator's routing decision. Fields rrguard does not read are kept
// opaque.
// +kubebuilder:pruning:PreserveUnknownFields
type RoutingStatus struct {
	// NextAllowedExecution gates re-execution with exponential backoff.
	// +optional
	NextAllowedExecution *metav1.Time `json:"nextAllowedExecution,omitempty"`
	// +optional
	BlockReason string `json:"blockReason,omitempty"`
	// DuplicateOf names the original RR when the orchestrator found this one a duplicate.
	// +optional
	DuplicateOf string `json:"duplicateOf,omitempty"`
	// +optional
	DuplicateCount int32 `json:"duplicateCount,omitempty"`
}

// RemediationRequest asks Kubernaut to remediate one problem, identified by its fingerprint.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:path=remediationrequests,singular=remediationrequest,shortName=rr,scope=Namespaced
// +kubebuilder:selectablefield:JSONPath=`.spec.signalFingerprint`
// +kubebuilder:selectablefield:JSONPath=`.spec.signalType`
// +kubebuilder:selectablefield:JSONPath=`.spec.severity`
// +kubebuilder:selectablefield:JSONPath=`.spec.clusterID`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.overallPhase`
// +kubebuilder:printcolumn:name="Outcome",type=string,JSONPath=`.status.completionStatus.outcome`
// +kubebuilder:printcolumn:name="Alert",type=string,JSONPath=`.spec.signalName`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.spec.clusterID`,priority=1
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.signalSource`,priority=1
// +kubebuilder:printcolumn:name="Signal NS",type=string,JSONPath=`.spec.targetResource.namespace`,priority=1
type RemediationRequest struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is immutable: a new signal is a new RR.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
	Spec   RemediationRequestSpec   `json:"spec"`
	Status RemediationRequestStatus `json:"status,omitempty"`
}

// RemediationRequestList is a list of RemediationRequests.
//
// +kubebuilder:object:root=true
type RemediationRequestList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RemediationRequest `json:"items"`
}
