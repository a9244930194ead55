"""Render this repository's Helm chart offline with Helm's own engine (helm-python-sdk).

Used where the cluster's objects are the source of truth off the cluster: the demo's local
Prometheus rules and Alertmanager route, and its event gateway's Sensors and WorkflowTemplates.
The chart is found by `root()` (a checkout, or $BIGBERTHA_CHART for an installed package).
No cluster or chart repository is contacted. Helm renders the subcharts in charts/ (`make deps`)
with ours; `render` returns this chart's own objects, `render_templates` the whole release.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from bigbertha.core.errors import ConfigError

# The source checkout this package runs from (an installed package has no chart beside it).
ROOT = Path(__file__).resolve().parents[3]
CHART_ENV = "BIGBERTHA_CHART"
# What a cluster with the subcharts' CRDs installed reports (the chart checks for them).
CUSTOM_KINDS = {
    "monitoring.coreos.com/v1": ("ServiceMonitor", "PodMonitor", "PrometheusRule"),
    "monitoring.coreos.com/v1alpha1": ("AlertmanagerConfig",),
    # KEDA's, installed with KEDA itself (a cluster operator, docs/gpu.md), not by install-crds.sh.
    "keda.sh/v1alpha1": ("ScaledObject",),
    # Kubeflow Trainer's, installed with Trainer (workflows.finetune.trainJob, docs/gpu.md).
    "trainer.kubeflow.org/v1alpha1": ("TrainJob", "TrainingRuntime"),
    "argoproj.io/v1alpha1": (
        "Workflow",
        "WorkflowTemplate",
        "ClusterWorkflowTemplate",
        "CronWorkflow",
        "EventBus",
        "EventSource",
        "Sensor",
        "Application",
    ),
}
API_VERSIONS = tuple(CUSTOM_KINDS) + tuple(
    f"{gv}/{k}" for gv, kinds in CUSTOM_KINDS.items() for k in kinds
)
KUBE_VERSION = "1.30.0"


def root() -> Path:
    """The BigBertha chart to render: $BIGBERTHA_CHART, else the current directory, else the
    checkout this package runs from. ConfigError says how to point at one when none is found."""
    chosen = os.environ.get(CHART_ENV)
    for candidate in [chosen] if chosen else [Path.cwd(), ROOT]:
        chart_yaml = Path(candidate) / "Chart.yaml"
        if (
            chart_yaml.is_file()
            and (yaml.safe_load(chart_yaml.read_text()) or {}).get("name") == "bigbertha"
        ):
            return Path(candidate).resolve()
    if chosen:
        raise ConfigError(f"{CHART_ENV}={chosen}: no BigBertha Chart.yaml there")
    raise ConfigError(
        "the BigBertha chart was not found: run this from a clone of the repository, "
        f"or set {CHART_ENV} to the chart's directory"
    )


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's `-f a.yaml -f b.yaml` merge: maps merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_values(
    files: Iterable[Path], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        values = merge_values(values, yaml.safe_load(Path(path).read_text()) or {})
    return merge_values(values, overrides or {})


def render_templates(
    values: Mapping[str, Any] | None = None,
    *,
    chart_dir: Path | None = None,
    release: str = "bigbertha",
    namespace: str = "bigbertha",
    api_versions: Iterable[str] = API_VERSIONS,
    kube_version: str = KUBE_VERSION,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` prints it.

    Raises helm_python's HelmError (HelmRenderError for a template's `fail`, HelmValuesError
    for a schema violation): callers that test the chart match on them.
    """
    import helm_python
    from helm_python import _native

    # Fresh per render: rendering mutates the loaded chart.
    chart = helm_python.Chart.load(str(chart_dir or root()))
    try:
        opts = {
            "name": release,
            "namespace": namespace,
            "is_install": True,
            "api_versions": list(api_versions),
            "kube_version": kube_version,
        }
        raw = _native.call_string(
            "helm_render", chart._raw(), json.dumps(dict(values or {})), json.dumps(opts)
        )
    finally:
        chart.close()
    rendered: dict[str, str] = json.loads(raw)
    return rendered


def render(
    values_files: Iterable[Path] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    release: str = "bigbertha",
    namespace: str = "bigbertha",
) -> list[dict[str, Any]]:
    """This chart's own rendered objects (not its subcharts') for values files + overrides: what
    the demo stands in for locally. Raises ConfigError naming the problem."""
    import helm_python

    try:
        rendered = render_templates(
            load_values(values_files, overrides), release=release, namespace=namespace
        )
    except helm_python.HelmError as exc:
        raise ConfigError(f"chart render failed: {' '.join(str(exc).split())}") from exc
    objects = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        if path.split("/")[1] == "charts":
            continue  # <chart>/charts/<subchart>/templates/...
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


# Functions Helm adds to Go templates; argo-events' dataTemplate has sprig's only (v1.9.10
# pkg/sensors/triggers/params.go, getValueWithTemplate: .Funcs(sprig.FuncMap())).
_HELM_ONLY = re.compile(
    r"\b(include|tpl|required|lookup|toYaml|toYamlPretty|fromYaml|fromYamlArray|toToml|"
    r"fromToml|fromJson|fromJsonArray|mustToYaml)\b"
)


def go_template(template: str, data: Any) -> str:
    """Evaluate an Argo Events Sensor `dataTemplate` on event `data`, as the Sensor does.

    argo-events v1.9.10 (the pinned chart's appVersion) executes the template with Go's
    text/template and sprig v3.3.0 on `{"Input": <event data>}` (params.go,
    getValueWithTemplate). Helm's engine is the same text/template with sprig, so the template
    is run there, in a throwaway chart, as a named template called with that map (`.` and `$`
    are the map, as in Argo). Helm's extra functions are refused, and an empty result is a
    ValueError, as Argo treats it ("template evaluated to empty string or no value"). Helm
    replaces "<no value>" with "" where Argo keeps it: both end up refused here.
    """
    import helm_python

    found = _HELM_ONLY.search(template)
    if found:
        raise ValueError(f"dataTemplate uses {found.group()}: not a function argo-events has")
    with tempfile.TemporaryDirectory(prefix="bigbertha-gotemplate-") as tmp:
        root = Path(tmp)
        (root / "templates").mkdir()
        (root / "Chart.yaml").write_text("apiVersion: v2\nname: datatemplate\nversion: 0.1.0\n")
        (root / "templates" / "_param.tpl").write_text(
            '{{ define "param" }}' + template + "{{ end }}"
        )
        (root / "templates" / "out.txt").write_text('{{ include "param" .Values }}')
        chart = helm_python.Chart.load(str(root))
        try:
            rendered = chart.render({"Input": data}, name="datatemplate", namespace="default")
        except helm_python.HelmError as exc:
            raise ValueError(f"dataTemplate failed: {' '.join(str(exc).split())}") from exc
        finally:
            chart.close()
    out = rendered["datatemplate/templates/out.txt"]
    if out == "":
        raise ValueError(f"dataTemplate evaluated to an empty string or no value: {template}")
    return out
