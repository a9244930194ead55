{{/* bigbertha.events.podTemplate: root ctx -> spec.template shared by the EventSources and Sensors (labels, security, resources). */}}
{{- define "bigbertha.events.podTemplate" -}}
metadata:
  labels:
    {{- include "bigbertha.labels" (dict "ctx" . "component" "events") | nindent 4 }}
serviceAccountName: {{ include "bigbertha.fullname" . }}-events
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
container:
  resources:
    {{- toYaml .Values.events.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
{{- end -}}
