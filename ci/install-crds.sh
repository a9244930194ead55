#!/usr/bin/env bash
# Install or upgrade the CustomResourceDefinitions a BigBertha release uses, BEFORE
# `helm install` / `helm upgrade` (docs/install.md, "Install order").
#
# Why a separate step: Helm maps every object of a release to an API before it creates anything
# (hooks included), so one release cannot create the Argo CRDs from its subcharts' templates and
# the EventBus/Sensor/WorkflowTemplate objects that use them. This script applies the CRDs of the
# PINNED subchart archives in charts/ (filled by `helm dependency build`) with server-side apply
# (the Argo Workflows CRDs exceed the client-side last-applied annotation limit). The umbrella
# sets `crds.install: false` on the Argo subcharts so the release never owns them twice, and
# templates/validate.yaml refuses to render while a kind it uses is missing from the cluster.
#
# Usage: ci/install-crds.sh [--dry-run]     (needs helm, kubectl and tar)
set -euo pipefail

cd "$(dirname "$0")/.."
CHARTS_DIR=${CHARTS_DIR:-charts}
DRY_RUN=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=(--dry-run=server); fi

# archive | CRD files inside it (glob) | file: plain YAML, template: rendered by `helm template`
CRDS=(
  "argo-workflows-1.0.18.tgz|argo-workflows/files/crds/full/*.yaml|file"
  "argo-events-2.4.22.tgz|argo-events/templates/crds/*.yml|template"
  "argo-cd-10.1.1.tgz|argo-cd/templates/crds/*.yaml|template"
  "kube-prometheus-stack-88.5.3.tgz|kube-prometheus-stack/charts/crds/crds/*.yaml|file"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for entry in "${CRDS[@]}"; do
  IFS='|' read -r archive pattern mode <<<"$entry"
  tgz="$CHARTS_DIR/$archive"
  if [[ ! -f "$tgz" ]]; then
    echo "install-crds: $tgz is missing: run 'helm dependency build' first" >&2
    exit 1
  fi
  tar -xzf "$tgz" -C "$work" --wildcards "$pattern"
  for file in $work/$pattern; do
    chart=${archive%-*}
    if [[ "$mode" == "template" ]]; then
      # The chart's own CRD templates, rendered as the chart would with crds.install=true.
      helm template bigbertha-crds "$tgz" --set crds.install=true \
        --show-only "${file#"$work/$chart/"}" >"$file.rendered"
      file="$file.rendered"
    fi
    echo "install-crds: $archive ${file#"$work/"}"
    kubectl apply --server-side --force-conflicts --field-manager=bigbertha-crds \
      "${DRY_RUN[@]}" -f "$file"
  done
done

# Wait until the API server serves them, so the `helm install` that follows can map every kind.
if [[ ${#DRY_RUN[@]} -eq 0 ]]; then
  kubectl wait --for=condition=Established --timeout=120s \
    crd/eventbus.argoproj.io crd/eventsources.argoproj.io crd/sensors.argoproj.io \
    crd/workflowtemplates.argoproj.io crd/workflows.argoproj.io crd/applications.argoproj.io \
    crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com \
    crd/alertmanagerconfigs.monitoring.coreos.com
fi
