{{/* bigbertha.monitoring.labels: (dict "ctx" . "rules" <bool>) -> the labels a Prometheus or Alertmanager selects our ServiceMonitors, PrometheusRules and AlertmanagerConfig by: kube-prometheus-stack's default selector (release: <release>, its *SelectorNilUsesHelmValues) unless monitoring.labels sets it, then monitoring.labels (an existing stack's selector), and on rules monitoring.ruleLabels. */}}
{{- define "bigbertha.monitoring.labels" -}}
{{- $m := .ctx.Values.monitoring -}}
{{- $labels := merge (deepCopy ($m.labels | default dict)) (dict "release" .ctx.Release.Name) -}}
{{- if .rules -}}{{- $labels = merge (deepCopy ($m.ruleLabels | default dict)) $labels -}}{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* bigbertha.monitoring.seconds: a Prometheus duration ("1h30m", "90s") -> its seconds, for rules that compare a timestamp with time(). */}}
{{- define "bigbertha.monitoring.seconds" -}}
{{- $units := dict "ms" 0.001 "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 "y" 31536000 -}}
{{- $total := 0.0 -}}
{{- range (regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" . -1) -}}
{{- $unit := regexFind "(ms|s|m|h|d|w|y)$" . -}}
{{- $total = addf $total (mulf (trimSuffix $unit . | float64) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
{{/* bigbertha.monitoring.votes: votes standing over a window by namespace, model and version; params: sel (label matchers, a rating among them or not), window. Cast minus those a later vote on the same answer replaced (`or ... * 0`: no replaced series yet); each replica's copy collapsed with max before the sum. */}}
{{- define "bigbertha.monitoring.votes" -}}
{{- $cast := printf "sum by (namespace, model, model_version) (max without (instance, pod) (increase(bigbertha_feedback_total{%s}[%s])))" .sel .window -}}
{{- $replaced := printf "sum by (namespace, model, model_version) (max without (instance, pod) (increase(bigbertha_feedback_replaced_total{%s}[%s])))" .sel .window -}}
({{ $cast }} - ({{ $replaced }} or {{ $cast }} * 0))
{{- end -}}
