{{- define "concordance-operator.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "concordance-operator.labels" -}}
app.kubernetes.io/name: concordance-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "concordance-operator.selector" -}}
app.kubernetes.io/name: concordance-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
