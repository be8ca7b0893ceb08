{{- define "rrguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: <fullname>-<name in config/>, so release "rrguard" gives config/default's names.
At most 28 characters: the longest name, <fullname>-controller-manager-metrics-service, is then
within the 63 a Service name may have. */}}
{{- define "rrguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 28 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 28 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 28 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rrguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "rrguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rrguard
{{- end }}

{{/* The pods' labels and every selector's, as in config/: one rrguard per cluster (its webhook and
policy are cluster-wide), so selectors need not tell releases apart, and they match a
kustomize install's (a Deployment's selector cannot change). */}}
{{- define "rrguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rrguard.name" . }}
control-plane: rrguard
{{- end }}

{{- define "rrguard.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- if .Values.image.tag }}
{{- printf "%s:%s@%s" .Values.image.repository .Values.image.tag .Values.image.digest }}
{{- else }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- /* "true" when the built-in RR policy is enabled: then, and only then, the chart renders the
RR's webhooks, its name-check policy and its Roles in rrNamespaces. */}}
{{- define "rrguard.enforcesRR" -}}
{{- if has "remediationrequests" .Values.builtinPolicies }}true{{ end }}
{{- end }}

{{- define "rrguard.webhookService" -}}
{{ include "rrguard.fullname" . }}-webhook-service
{{- end }}

{{- define "rrguard.servingCert" -}}
{{ include "rrguard.fullname" . }}-serving-cert
{{- end }}

{{/* Settings that cannot be expressed in values.schema.json. */}}
{{- define "rrguard.validate" -}}
{{- if le (int .Values.replicaCount) (int .Values.podDisruptionBudget.minAvailable) }}
{{- fail (printf "replicaCount (%d) must be above podDisruptionBudget.minAvailable (%d): otherwise no node drain can ever evict a replica" (int .Values.replicaCount) (int .Values.podDisruptionBudget.minAvailable)) }}
{{- end }}
{{- end }}

{{/* What both pods share, the Deployment's and the uninstall Job's: where they may run, and the
restricted security settings (non-root, read-only root, no capabilities, RuntimeDefault seccomp). */}}
{{- define "rrguard.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "rrguard.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "rrguard.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* The uninstall hook's objects: created after the release's are deleted, RBAC (weight -5)
before the Job (0), all removed once the Job succeeded. */}}
{{- define "rrguard.releaseHook" -}}
helm.sh/hook: post-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}
