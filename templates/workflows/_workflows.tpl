{{/* bigbertha.workflows.container: (dict "ctx" . "image" <image values> "args" <list> "resources" <map> "s3" bool "redis" bool ["env" <list of name/value>] ["shm" bool]) -> the container of one `bigbertha <subcommand>` step; "env": settings only this step reads; "shm": /dev/shm mounted from memory. */}}
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
{{- if .shm }}
  - name: dshm
    mountPath: /dev/shm
{{- end }}
{{- end -}}

{{/* bigbertha.workflows.volumes: root ctx -> the volumes of a step pod (tmp, cache, and /dev/shm for NCCL, used only by a finetune step on several GPUs). */}}
{{- define "bigbertha.workflows.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.workflows.cacheSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.workflows.finetune.shmSizeLimit }}
{{- end -}}

{{/* bigbertha.finetune.gpus: root ctx -> GPUs per node of the finetune step: workflows.finetune.gpus, else the nvidia.com/gpu its train resources ask for (values files of 0.2.0); both and unequal fail the render. */}}
{{- define "bigbertha.finetune.gpus" -}}
{{- $f := .Values.workflows.finetune -}}
{{- $asked := dig "limits" "nvidia.com/gpu" (dig "requests" "nvidia.com/gpu" 0 $f.train.resources) $f.train.resources | int -}}
{{- if and (gt (int $f.gpus) 0) (gt $asked 0) (ne $asked (int $f.gpus)) -}}
{{- fail (printf "bigbertha: workflows.finetune.gpus is %d but workflows.finetune.train.resources asks for %d nvidia.com/gpu: set gpus only" (int $f.gpus) $asked) -}}
{{- end -}}
{{- max (int $f.gpus) $asked -}}
{{- end -}}

{{/* bigbertha.finetune.resources: root ctx -> the train resources with the finetune step's GPUs (bigbertha.finetune.gpus) in requests and limits. */}}
{{- define "bigbertha.finetune.resources" -}}
{{- $r := deepCopy .Values.workflows.finetune.train.resources -}}
{{- $gpus := include "bigbertha.finetune.gpus" . | int -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $r "requests" (merge (dict "nvidia.com/gpu" $gpus) (default dict $r.requests)) -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" $gpus) (default dict $r.limits)) -}}
{{- end -}}
{{- toYaml $r -}}
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
  {{- include "bigbertha.workflows.volumes" $ctx | nindent 2 }}
{{- end -}}

{{/* bigbertha.workflows.retryStrategy: (dict "retry" <limit, backoff values>) -> a step's retryStrategy: pod errors (eviction, node loss) and exit code 69 (a service unreachable: bigbertha.core.errors.ExitCode.UNAVAILABLE) are retried with backoff; 2 (configuration), 3 (bad input), 70 (a bug) and 75 (busy) are final. */}}
{{- define "bigbertha.workflows.retryStrategy" -}}
limit: {{ .retry.limit }}
retryPolicy: Always
expression: {{ `lastRetry.status == "Error" || lastRetry.exitCode == "69"` | quote }}
backoff:
  {{- toYaml .retry.backoff | nindent 2 }}
{{- end -}}
