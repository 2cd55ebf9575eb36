{{/* Names follow the usual Helm conventions so several releases can share a namespace. */}}
{{- define "attendance-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "attendance-relay.fullname" -}}
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

{{- define "attendance-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "attendance-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attendance-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "attendance-relay.labels" -}}
helm.sh/chart: {{ include "attendance-relay.chart" . }}
{{ include "attendance-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: attendance-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "attendance-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "attendance-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the gateway's secret settings come from: the operator's, or the chart's own. */}}
{{- define "attendance-relay.secretName" -}}
{{- default (include "attendance-relay.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* True (non-empty) when the chart creates its own Secret. */}}
{{- define "attendance-relay.createSecret" -}}
{{- if not .Values.secrets.existingSecret }}
{{- $data := dict }}
{{- range $k, $v := .Values.secrets.values }}{{ if $v }}{{ $_ := set $data $k $v }}{{ end }}{{ end }}
{{- if and (eq .Values.store "postgres") (not .Values.postgres.existingSecret) .Values.postgres.url }}{{ $_ := set $data "RELAY_DATABASE_URL" .Values.postgres.url }}{{ end }}
{{- if $data }}true{{ end }}
{{- end }}
{{- end }}

{{- define "attendance-relay.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The label matchers every alert and dashboard query is scoped to. */}}
{{- define "attendance-relay.metricSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "attendance-relay.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Refuse what cannot work, at render time: SQLite is one file on one volume, so
one process only; the PostgreSQL mode needs its URL from a Secret.
*/}}
{{- define "attendance-relay.validate" -}}
{{- if eq .Values.store "sqlite" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "store: sqlite runs exactly one replica (replicaCount is %v): SQLite is one file on one volume. Use store: postgres for several replicas." .Values.replicaCount) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "store: sqlite runs exactly one replica: autoscaling.enabled needs store: postgres." }}
{{- end }}
{{- end }}
{{- if eq .Values.store "postgres" }}
{{- if not (or .Values.postgres.existingSecret .Values.postgres.url .Values.secrets.existingSecret) }}
{{- fail "store: postgres needs the database URL from a Secret: set postgres.existingSecret (key postgres.existingSecretKey), or secrets.existingSecret with a RELAY_DATABASE_URL key, or postgres.url for a chart-created Secret." }}
{{- end }}
{{- end }}
{{- if and .Values.postgres.url .Values.postgres.existingSecret }}
{{- fail "postgres.url and postgres.existingSecret exclude each other." }}
{{- end }}
{{- end }}
