{{/* bigbertha.networkPolicy.podSelector: (dict "ctx" . "components" <list>) -> podSelector matching those components of this release. */}}
{{- define "bigbertha.networkPolicy.podSelector" -}}
matchLabels:
  app.kubernetes.io/instance: {{ .ctx.Release.Name }}
  app.kubernetes.io/part-of: bigbertha
{{- if .components }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- toYaml .components | nindent 6 }}
{{- end }}
{{- end -}}

{{/* bigbertha.networkPolicy.apiServerEgress: root ctx -> egress rule to the Kubernetes API (Argo executor, Sensor submits). */}}
{{- define "bigbertha.networkPolicy.apiServerEgress" -}}
- ports:
  {{- range .Values.networkPolicy.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
  {{- end }}
  {{- with .Values.networkPolicy.apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* bigbertha.networkPolicy.backendsEgress: root ctx -> egress to Milvus, MinIO, MLflow and Redis pods in this namespace. */}}
{{- define "bigbertha.networkPolicy.backendsEgress" -}}
- to:
    - podSelector: {}
  ports:
    - port: 19530
      protocol: TCP
    - port: 9000
      protocol: TCP
    - port: 5000
      protocol: TCP
    - port: 6379
      protocol: TCP
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}
