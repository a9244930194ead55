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
