{{/* The chart's name, or nameOverride. */}}
{{- define "chaos-ebpf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it holds the chart's name. */}}
{{- define "chaos-ebpf.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "chaos-ebpf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chaos-ebpf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chaos-ebpf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chaos-ebpf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "chaos-ebpf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chaos-ebpf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is needed when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the agent does in the namespaces it serves: one list of rules, granted by the
ClusterRole when targetNamespaces is empty (every namespace), else by a Role in each.
*/}}
{{- define "chaos-ebpf.namespacedRules" -}}
# The experiments: watched, their finalizer added and removed (update/patch), their
# status written through the status subresource.
- apiGroups: ["chaos-ebpf.io"]
  resources: ["chaosexperiments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["chaos-ebpf.io"]
  resources: ["chaosexperiments/status"]
  verbs: ["get", "patch", "update"]
# The OwnerReferencesPermissionEnforcement admission plugin asks for it of whoever
# makes an object that an experiment owns with blockOwnerDeletion.
- apiGroups: ["chaos-ebpf.io"]
  resources: ["chaosexperiments/finalizers"]
  verbs: ["update"]
# The pods an experiment selects: resolved to their network namespace on this node;
# delete for the pod-kill action.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# The Services that select a fault's peer pods: their ClusterIPs are peers too (a pod
# that reaches its peers through a Service sends to the ClusterIP).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
# Events on experiments (applied, reverted, failed), through both Event APIs.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
