#!/usr/bin/env bash
# End-to-end checks on the kind cluster of .github/workflows/ci.yml's kind-install job, after
# `helm install bigbertha . -n bigbertha -f values/local.yaml` and `helm test`:
#
#   1. the event loops: a document PUT into the documents bucket starts an ingest Workflow (the
#      MinIO EventSource and the ingest Sensor), and a firing retrain alert POSTed to the alerts
#      webhook EventSource starts a retrain Workflow (the retrain Sensor); both must succeed;
#   2. the retry rule of every WorkflowTemplate step (bigbertha.workflows.retryStrategy in
#      templates/workflows/_workflows.tpl, docs/reliability.md): a step that exits 69 (a service
#      unreachable) is retried and succeeds, a step that exits 2 (configuration) fails at once.
#
# It needs Docker and Kubernetes, which the project's own CI machines do not have: it runs only on
# GitHub-hosted runners. tests/test_github_workflow.py keeps it correct without a cluster: the
# names, ports, buckets, dataset URIs and labels below against the chart's render of
# values/local.yaml, the alert against the retrain Sensor's filters, and the Workflow manifest
# against the Argo Workflow CRD and the chart's retry expression.
#
# Usage: ci/kind-e2e.sh   (from the repository root; needs kubectl, curl, jq, yq)
set -euo pipefail

cd "$(dirname "$0")/.."

NAMESPACE=bigbertha
# Release "bigbertha" with values/local.yaml renders these (checked by the tests above).
WEBHOOK_EVENTSOURCE=bigbertha-alerts      # Argo Events serves it as <name>-eventsource-svc
WEBHOOK_PORT=12000                        # events.webhook.port
WEBHOOK_PATH=/alerts                      # events.webhook.endpoint
WEBHOOK_SECRET=bigbertha-events-webhook   # key token: the bearer token the EventSource checks
MINIO_EVENTSOURCE=bigbertha-minio         # listens to DOCUMENTS_BUCKET
MINIO_SERVICE=bigbertha-minio             # minio.fullnameOverride
MINIO_PORT=9000                           # minio.service.port
S3_SECRET=bigbertha-s3                    # keys rootUser and rootPassword
DOCUMENTS_BUCKET=documents                # objectStorage.documentsBucket
CURATED_URI=s3://bigbertha-artifacts/datasets/curated.jsonl   # settings.finetune.data[0]
GOLDEN_URI=s3://bigbertha-artifacts/datasets/golden.jsonl     # settings.evaluate.golden
INGEST_SENSOR=bigbertha-ingest
RETRAIN_SENSOR=bigbertha-retrain
# Labels the Sensors put on the Workflows they submit.
INGEST_SELECTOR=app.kubernetes.io/instance=bigbertha,app.kubernetes.io/component=ingest
RETRAIN_SELECTOR=app.kubernetes.io/instance=bigbertha,app.kubernetes.io/component=finetune
WORKFLOWS_SERVICE_ACCOUNT=bigbertha-workflows   # may report step results (workflowtaskresults)
# The exporter image, loaded into kind by the job: a shell, no pull.
IMAGE="ghcr.io/bigbertha/bigbertha:$(yq '.appVersion' Chart.yaml)"

log() { echo "kind-e2e: $*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# deadline_left <deadline>: seconds until SECONDS reaches it (at least 1).
deadline_left() { echo $(($1 > SECONDS ? $1 - SECONDS : 1)); }

# ready <selector> <seconds>: pods with these labels exist and are Ready.
ready() {
  local deadline=$((SECONDS + $2))
  until [ -n "$(kubectl -n "$NAMESPACE" get pods -l "$1" -o name)" ]; do
    ((SECONDS < deadline)) || die "no pod with labels $1 after $2 s"
    sleep 5
  done
  kubectl -n "$NAMESPACE" wait --for=condition=Ready pod -l "$1" --timeout="$(deadline_left "$deadline")s"
}

# forward <service> <port>: 127.0.0.1:<port> reaches the Service until this script exits.
forward() {
  local deadline=$((SECONDS + 300))
  until kubectl -n "$NAMESPACE" get service "$1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "no Service $1 after 300 s"
    sleep 5
  done
  kubectl -n "$NAMESPACE" port-forward "service/$1" "$2:$2" >"/tmp/port-forward-$1.log" 2>&1 &
  PIDS+=("$!")
  deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || die "port-forward to $1:$2: $(cat "/tmp/port-forward-$1.log")"
    sleep 1
  done
}

# secret <name> <key>: one decoded value of a Secret.
secret() { kubectl -n "$NAMESPACE" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }

# s3_put <file> <s3://bucket/key>: a SigV4-signed PUT to MinIO through the port-forward.
s3_put() {
  curl --fail --silent --show-error --retry 5 --retry-all-errors --retry-delay 2 \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_USER:$S3_PASSWORD" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    --upload-file "$1" "http://127.0.0.1:$MINIO_PORT/${2#s3://}"
}

# submitted <selector> <seconds>: the name of the first Workflow with these labels, once there.
submitted() {
  local deadline=$((SECONDS + $2)) name
  while :; do
    name=$(kubectl -n "$NAMESPACE" get workflows -l "$1" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
    [ -z "$name" ] || break
    ((SECONDS < deadline)) || die "no Workflow with labels $1 after $2 s"
    sleep 5
  done
  echo "$name"
}

# finished <workflow> <seconds>: its final phase (Succeeded, Failed or Error).
finished() {
  local deadline=$((SECONDS + $2)) phase
  while :; do
    phase=$(kubectl -n "$NAMESPACE" get workflow "$1" -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded | Failed | Error) break ;; esac
    ((SECONDS < deadline)) || die "Workflow $1 still ${phase:-pending} after $2 s"
    sleep 10
  done
  echo "$phase"
}

# succeeded <workflow> <seconds>: it must end Succeeded (else its nodes are printed).
succeeded() {
  local phase
  phase=$(finished "$1" "$2")
  if [ "$phase" != Succeeded ]; then
    kubectl -n "$NAMESPACE" get workflow "$1" -o json |
      jq -r '.status.nodes[] | "\(.displayName) \(.phase) exit=\(.outputs.exitCode // "-") \(.message // "")"'
    die "Workflow $1 ended $phase"
  fi
  log "Workflow $1 Succeeded"
}

# attempts <workflow>: its pods in order, "<phase>:<exit code>" each.
attempts() {
  kubectl -n "$NAMESPACE" get workflow "$1" -o json |
    jq -r '[.status.nodes[] | select(.type == "Pod")] | sort_by(.name)
           | map("\(.phase):\(.outputs.exitCode // "")") | join(" ")'
}

# submit_step <name> <shell command>: a one-step Workflow under the chart's retry rule for exit
# codes (bigbertha.workflows.retryStrategy), with a 1 s backoff instead of the chart's minutes.
submit_step() {
  kubectl -n "$NAMESPACE" create -f - <<EOF
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  name: $1
  labels:
    app.kubernetes.io/name: kind-e2e
spec:
  entrypoint: step
  serviceAccountName: ${WORKFLOWS_SERVICE_ACCOUNT}
  activeDeadlineSeconds: 600
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  templates:
    - name: step
      retryStrategy:
        limit: 3
        retryPolicy: Always
        expression: 'lastRetry.status == "Error" || lastRetry.exitCode == "69"'
        backoff:
          duration: 1s
          factor: 1
      container:
        image: ${IMAGE}
        imagePullPolicy: IfNotPresent
        command: [sh, -c]
        args: ["$2"]
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          capabilities:
            drop: [ALL]
EOF
}

# ---- 0. The retry rule: submitted first, it runs while the events are set up ----------------
# {{retries}} is Argo's attempt number: the first attempt exits 69, the retry exits 0.
submit_step e2e-retry-69 'test {{retries}} -gt 0 || exit 69'
submit_step e2e-exit-2 'exit 2'

# ---- 1. The event loops ------------------------------------------------------------------------
for selector in "eventsource-name=$WEBHOOK_EVENTSOURCE" "eventsource-name=$MINIO_EVENTSOURCE" \
  "sensor-name=$INGEST_SENSOR" "sensor-name=$RETRAIN_SENSOR"; do
  ready "$selector" 600
done
# The MinIO EventSource listens from the moment its pod runs; give it a moment to subscribe.
sleep 15

forward "$MINIO_SERVICE" "$MINIO_PORT"
S3_USER=$(secret "$S3_SECRET" rootUser)
S3_PASSWORD=$(secret "$S3_SECRET" rootPassword)

# The retrain's inputs where the settings name them: the demo's curated set (its first step
# needs finetune.min_examples rows) and the shipped golden set the gate evaluates on.
s3_put src/bigbertha/local/demo_data/train.jsonl "$CURATED_URI"
s3_put src/bigbertha/training/golden/bigbertha-docs.jsonl "$GOLDEN_URI"

# A document into the watched bucket: the ingest Sensor submits a Workflow for it.
s3_put docs/runbooks.md "s3://$DOCUMENTS_BUCKET/kind-e2e/runbooks.md"
ingest=$(submitted "$INGEST_SELECTOR" 300)
log "ingest Workflow $ingest submitted"
succeeded "$ingest" 1800

# A firing alert labelled bigbertha_action=retrain, as Alertmanager's webhook sends it
# (notify/webhook.Message, version 4) with the bearer token the EventSource checks.
forward "$WEBHOOK_EVENTSOURCE-eventsource-svc" "$WEBHOOK_PORT"
token=$(secret "$WEBHOOK_SECRET" token)
curl --fail --silent --show-error --retry 10 --retry-all-errors --retry-delay 3 \
  -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  --data-binary @- "http://127.0.0.1:$WEBHOOK_PORT$WEBHOOK_PATH" <<'JSON'
{
  "receiver": "bigbertha/bigbertha-retrain/argo-events",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "BigBerthaNegativeFeedbackHigh",
        "bigbertha_action": "retrain",
        "namespace": "bigbertha",
        "severity": "critical"
      },
      "annotations": {
        "summary": "kind-e2e: a synthetic retrain alert"
      },
      "startsAt": "2026-01-01T00:00:00Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://kind-e2e.invalid/",
      "fingerprint": "af0509b8099fc2d9"
    }
  ],
  "notification_reason": "first notification",
  "groupLabels": {
    "namespace": "bigbertha"
  },
  "commonLabels": {
    "alertname": "BigBerthaNegativeFeedbackHigh",
    "bigbertha_action": "retrain",
    "namespace": "bigbertha",
    "severity": "critical"
  },
  "commonAnnotations": {
    "summary": "kind-e2e: a synthetic retrain alert"
  },
  "externalURL": "http://kind-e2e.invalid/",
  "version": "4",
  "groupKey": "{}:{namespace=\"bigbertha\"}",
  "truncatedAlerts": 0
}
JSON
retrain=$(submitted "$RETRAIN_SELECTOR" 300)
log "retrain Workflow $retrain submitted"
succeeded "$retrain" 3600

# ---- 2. The retry rule's outcome ----------------------------------------------------------------
succeeded e2e-retry-69 600
tries=$(attempts e2e-retry-69)
case "$tries" in
  "Failed:69 Succeeded:"*) log "e2e-retry-69: $tries (retried after exit 69)" ;;
  *) die "e2e-retry-69: attempts $tries, expected a failed exit 69 then a success" ;;
esac

phase=$(finished e2e-exit-2 600)
tries=$(attempts e2e-exit-2)
if [ "$phase" != Failed ] || [ "$tries" != "Failed:2" ]; then
  die "e2e-exit-2: $phase after attempts $tries, expected Failed after one attempt exiting 2"
fi
log "e2e-exit-2: Failed after one attempt (exit 2 is not retried)"

log "all checks passed"
