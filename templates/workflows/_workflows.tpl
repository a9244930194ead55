{{/* bigbertha.workflows.container: (dict "ctx" . "image" <image values> "args" <list> "resources" <map> "s3" bool "redis" bool ["env" <list of name/value>]) -> the container of one `bigbertha <subcommand>` step; "env": settings only this step reads. */}}
{{- define "bigbertha.workflows.container" -}}
{{- $ctx := .ctx -}}
image: {{ include "bigbertha.image" (dict "ctx" $ctx "image" .image) }}
imagePullPolicy: {{ .image.pullPolicy }}
command: ["bigbertha"]
args:
  {{- toYaml .args | nindent 2 }}
{{- include "bigbertha.env" (dict "ctx" $ctx "s3" .s3 "redis" .redis) | nindent 0 }}
{{- range .env }}
  - name: {{ .name }}
    value: {{ .value | quote }}
{{- end }}
resources:
  {{- toYaml .resources | nindent 2 }}
securityContext:
  {{- toYaml $ctx.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: cache
    mountPath: /cache
{{- end -}}

{{/* bigbertha.workflows.spec: (dict "ctx" . "component" <name>) -> Workflow-level fields both WorkflowTemplates share (account, security, GC, volumes). */}}
{{- define "bigbertha.workflows.spec" -}}
{{- $ctx := .ctx -}}
{{- $w := $ctx.Values.workflows -}}
serviceAccountName: {{ include "bigbertha.fullname" $ctx }}-workflows
podMetadata:
  labels:
    {{- include "bigbertha.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
# No Service env vars in the steps (a Service named bigbertha-exporter would inject BIGBERTHA_EXPORTER_*).
podSpecPatch: '{"enableServiceLinks": false}'
podGC:
  {{- toYaml $w.podGC | nindent 2 }}
ttlStrategy:
  secondsAfterCompletion: {{ $w.ttlSecondsAfterCompletion }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  - name: cache
    emptyDir:
      sizeLimit: {{ $w.cacheSizeLimit }}
{{- end -}}

{{/* bigbertha.workflows.retryStrategy: (dict "retry" <limit, backoff values>) -> a step's retryStrategy: pod errors (eviction, node loss) and exit code 69 (a service unreachable: bigbertha.core.errors.ExitCode.UNAVAILABLE) are retried with backoff; 2 (configuration), 3 (bad input), 70 (a bug) and 75 (busy) are final. */}}
{{- define "bigbertha.workflows.retryStrategy" -}}
limit: {{ .retry.limit }}
retryPolicy: Always
expression: {{ `lastRetry.status == "Error" || lastRetry.exitCode == "69"` | quote }}
backoff:
  {{- toYaml .retry.backoff | nindent 2 }}
{{- end -}}
