{{/* bigbertha.prometheusUrl: the Prometheus HTTP API our readers query (the canary step, KEDA's
prometheus triggers): monitoring.prometheusUrl, else the Service of this release's
kube-prometheus-stack as that chart names it (88.5.3 templates/_helpers.tpl
"kube-prometheus-stack.fullname", templates/prometheus/service.yaml). The same computation as the
canary step's in templates/workflows/finetune-workflowtemplate.yaml. */}}
{{- define "bigbertha.prometheusUrl" -}}
{{- $prometheus := .Values.monitoring.prometheusUrl -}}
{{- if not $prometheus -}}
{{- $kps := index .Values "kube-prometheus-stack" -}}
{{- $name := default "kube-prometheus-stack" $kps.nameOverride -}}
{{- $stack := $kps.fullnameOverride | default (contains $name .Release.Name | ternary .Release.Name (printf "%s-%s" .Release.Name $name)) -}}
{{- $prometheus = printf "http://%s-prometheus.%s.svc:%v" ($stack | trunc 26 | trimSuffix "-") .Release.Namespace (dig "prometheus" "service" "port" 9090 $kps) -}}
{{- end -}}
{{- $prometheus -}}
{{- end -}}

{{/* bigbertha.answerSeconds: the longest a streaming answer may take, settings.llm.max_new_tokens
at chatbot.shutdown.minTokensPerSecond (rounded up). A stopping chatbot or vLLM pod keeps
answering this long (preStop) before it gets SIGTERM. */}}
{{- define "bigbertha.answerSeconds" -}}
{{- $tokens := .Values.settings.llm.max_new_tokens | float64 -}}
{{- ceil (divf $tokens (.Values.chatbot.shutdown.minTokensPerSecond | float64)) | int -}}
{{- end -}}

{{/* bigbertha.terminationGrace: answerSeconds + chatbot.shutdown.marginSeconds (the process's own
shutdown after SIGTERM), the pod's terminationGracePeriodSeconds. */}}
{{- define "bigbertha.terminationGrace" -}}
{{- add (include "bigbertha.answerSeconds" . | int) (.Values.chatbot.shutdown.marginSeconds | int) -}}
{{- end -}}

{{/* bigbertha.autoscaling.crdCheck: (dict "ctx" . "value" "<the value that asked for it>") fails
the render when the cluster lacks KEDA's ScaledObject CRD (crdCheck). */}}
{{- define "bigbertha.autoscaling.crdCheck" -}}
{{- if and .ctx.Values.crdCheck (not (.ctx.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject")) -}}
{{- fail (printf "bigbertha: %s=true needs KEDA, and the cluster has no keda.sh/v1alpha1/ScaledObject CRD: install KEDA first (docs/gpu.md, \"Scaling on load\"), or set %s=false" .value .value) -}}
{{- end -}}
{{- end -}}

{{/* bigbertha.scaleDown: (dict "window" <seconds> "pods" <n> "period" <seconds>) -> an HPA
behavior.scaleDown: only to the highest recommendation of the window, `pods` pods per period. */}}
{{- define "bigbertha.scaleDown" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .window }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: {{ .pods }}
      periodSeconds: {{ .period }}
{{- end -}}

{{/* bigbertha.replicas: (dict "ctx" . "name" <Deployment> "replicas" <n> "autoscaled" <bool>) -> the `replicas:` line. Autoscaled, the HPA owns the count: none is rendered, except that `helm upgrade` repeats the live count (lookup), so turning autoscaling on or upgrading never drops the Deployment to 1 pod before the HPA's first sync (a field Helm removes falls back to the default 1). */}}
{{- define "bigbertha.replicas" -}}
{{- if not .autoscaled -}}
replicas: {{ .replicas }}
{{- else -}}
{{- $live := lookup "apps/v1" "Deployment" .ctx.Release.Namespace .name -}}
{{- with (dig "spec" "replicas" nil ($live | default dict)) -}}
replicas: {{ . }}
{{- end -}}
{{- end -}}
{{- end -}}
