{{/* Shared names and labels. Component-specific helpers live beside their component. */}}

{{/* bigbertha.name: root context -> the chart name, or nameOverride (app.kubernetes.io/name and the name prefix). */}}
{{- define "bigbertha.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* bigbertha.fullname: root context -> base name of every object (max 63 chars): fullnameOverride, else bigbertha.name.
Not derived from the release name: subchart values cannot be templated, so values.yaml names our
Secrets and the subcharts' Services (their fullnameOverride) literally, and those names must hold
under any release name. */}}
{{- define "bigbertha.fullname" -}}
{{- .Values.fullnameOverride | default (include "bigbertha.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* bigbertha.subchartFullname: (dict "ctx" . "chart" "<subchart>") -> that subchart's fullnameOverride: the name of its Service. */}}
{{- define "bigbertha.subchartFullname" -}}
{{- $values := index .ctx.Values .chart -}}
{{- required (printf "bigbertha: set %s.fullnameOverride (BigBertha wires the %s Service by that name; values.yaml sets it)" .chart .chart) $values.fullnameOverride -}}
{{- end -}}

{{/* bigbertha.labels: (dict "ctx" . "component" "<name>") -> standard labels for metadata. */}}
{{- define "bigbertha.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bigbertha.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bigbertha
{{- end -}}

{{/* bigbertha.selectorLabels: (dict "ctx" . "component" "<name>") -> immutable selector labels. */}}
{{- define "bigbertha.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bigbertha.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* bigbertha.events.webhookServiceName: root ctx -> Service Argo Events creates for the alerts EventSource. */}}
{{- define "bigbertha.events.webhookServiceName" -}}
{{- printf "%s-alerts-eventsource-svc" (include "bigbertha.fullname" .) -}}
{{- end -}}

{{/* bigbertha.events.webhookUrl: root ctx -> full http URL of the alerts webhook EventSource. */}}
{{- define "bigbertha.events.webhookUrl" -}}
{{- $w := .Values.events.webhook -}}
{{- printf "http://%s.%s.svc:%d%s" (include "bigbertha.events.webhookServiceName" .) .Release.Namespace (int $w.port) $w.endpoint -}}
{{- end -}}

{{/* bigbertha.events.webhookSecretName: root ctx -> Secret with the webhook bearer token (key "token"). */}}
{{- define "bigbertha.events.webhookSecretName" -}}
{{- .Values.events.webhook.auth.existingSecret | default (printf "%s-events-webhook" (include "bigbertha.fullname" .)) -}}
{{- end -}}

{{/* bigbertha.image: (dict "ctx" . "image" <image values>) -> registry/repository:tag; global.imageRegistry wins. */}}
{{- define "bigbertha.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if $registry -}}{{- $ref = printf "%s/%s" $registry $ref -}}{{- end -}}
{{- /* A digest pins the bytes (the release's digests.yaml, docs/images.md); the tag stays for people reading it. */ -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" $ref .image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* bigbertha.imagePullSecrets: root ctx -> imagePullSecrets list from global.imagePullSecrets. */}}
{{- define "bigbertha.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* bigbertha.generatedSecretValue: (dict "ctx" . "name" <secret> "key" <key>) -> the value kept from the live Secret, else a new random one. */}}
{{- define "bigbertha.generatedSecretValue" -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- $kept := dig "data" .key "" ($live | default dict) -}}
{{- if $kept -}}
{{- $kept | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}

{{/* bigbertha.s3SecretName: root ctx -> Secret with rootUser/rootPassword for the S3 API. */}}
{{- define "bigbertha.s3SecretName" -}}
{{- .Values.objectStorage.existingSecret | default (printf "%s-s3" (include "bigbertha.fullname" .)) -}}
{{- end -}}

{{/* bigbertha.s3Endpoint: root ctx -> host:port of the S3 API (this release's MinIO Service by default). */}}
{{- define "bigbertha.s3Endpoint" -}}
{{- .Values.objectStorage.endpoint | default (printf "%s.%s.svc:%v" (include "bigbertha.subchartFullname" (dict "ctx" . "chart" "minio")) .Release.Namespace .Values.minio.service.port) -}}
{{- end -}}

{{/* bigbertha.redisSecretName: root ctx -> Secret with the Redis `password`. */}}
{{- define "bigbertha.redisSecretName" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "bigbertha.fullname" .)) -}}
{{- end -}}

{{/* bigbertha.mlflowDatabaseSecretName: root ctx -> Secret with MLflow's PostgreSQL `username` and `password`. */}}
{{- define "bigbertha.mlflowDatabaseSecretName" -}}
{{- .Values.mlflowDatabase.auth.existingSecret | default (printf "%s-mlflow-db" (include "bigbertha.fullname" .)) -}}
{{- end -}}

{{/* bigbertha.env: (dict "ctx" . "s3" bool "redis" bool) -> settings ConfigMap and the secret env vars a bigbertha container needs. */}}
{{- define "bigbertha.env" -}}
{{- $ctx := .ctx -}}
envFrom:
  - configMapRef:
      name: {{ include "bigbertha.fullname" $ctx }}-settings
env:
{{- if .s3 }}
  - name: BIGBERTHA_S3__ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "bigbertha.s3SecretName" $ctx }}
        key: rootUser
  - name: BIGBERTHA_S3__SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "bigbertha.s3SecretName" $ctx }}
        key: rootPassword
{{- end }}
{{- if and .redis $ctx.Values.redis.enabled }}
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "bigbertha.redisSecretName" $ctx }}
        key: password
  - name: BIGBERTHA_REDIS__URL
    value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis.%s.svc:6379/0" (include "bigbertha.fullname" $ctx) $ctx.Release.Namespace | quote }}
{{- end }}
{{- with $ctx.Values.huggingface.existingSecret }}
  # Gated or private Hugging Face models (e.g. Llama 2): huggingface_hub reads HF_TOKEN.
  - name: HF_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: token
{{- end }}
  - name: HOME
    value: /tmp
  - name: HF_HOME
    value: /cache/huggingface
  # Registry downloads and the dequantised GGUF copy: the sized cache volume, not /tmp.
  - name: BIGBERTHA_HOME
    value: /cache/bigbertha
{{- end -}}

{{/* bigbertha.serving.name: root ctx -> name of the inference tier's Deployment, Service and ServiceAccount. */}}
{{- define "bigbertha.serving.name" -}}
{{- printf "%s-vllm" (include "bigbertha.fullname" .) -}}
{{- end -}}

{{/* bigbertha.identitySecretName: root ctx -> Secret with the chatbot's `identityKey` (the pseudonyms' key). */}}
{{- define "bigbertha.identitySecretName" -}}
{{- .Values.chatbot.identity.existingSecret | default (printf "%s-identity" (include "bigbertha.fullname" .)) -}}
{{- end -}}

{{/* bigbertha.chatbot.redirectUri: root ctx -> where the provider sends people back after sign-in. */}}
{{- define "bigbertha.chatbot.redirectUri" -}}
{{- $a := .Values.chatbot.auth -}}
{{- $a.redirectUri | default (printf "https://%s/oauth2callback" .Values.chatbot.ingress.host) -}}
{{- end -}}

{{/* bigbertha.serving.secretName: root ctx -> Secret with the tier's `apiKey`. */}}
{{- define "bigbertha.serving.secretName" -}}
{{- .Values.serving.auth.existingSecret | default (include "bigbertha.serving.name" .) -}}
{{- end -}}

{{/* bigbertha.serving.servedName: root ctx -> the name the tier serves its base model under. */}}
{{- define "bigbertha.serving.servedName" -}}
{{- .Values.serving.model.servedName | default .Values.serving.model.ref -}}
{{- end -}}

{{/* bigbertha.serving.apiBase: root ctx -> the tier's OpenAI-compatible base URL (the chatbot's llm.api_base). */}}
{{- define "bigbertha.serving.apiBase" -}}
{{- printf "http://%s.%s.svc:%d/v1" (include "bigbertha.serving.name" .) .Release.Namespace (int .Values.serving.service.port) -}}
{{- end -}}
