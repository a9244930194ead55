"""Render the umbrella chart offline with Helm's own engine (helm-python-sdk) and index the result.

Every render is the whole release a cluster receives: our templates AND the seven pinned
subcharts in charts/ (`make deps`). Helm silently skips a dependency missing from charts/, so a
render refuses to run until every pinned archive is there.

A fresh Chart is loaded for every render (the SDK's loaded chart is mutated by a render). The API
versions passed are those the cluster has once ci/install-crds.sh has run: the group/versions and
the group/version/Kind of every custom kind the chart renders (templates/validate.yaml checks them).
Each environment is rendered once per session per release (`render_env`): under the release name
`bigbertha` and under another name in another namespace, since nothing may depend on either.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygjson
import yaml

from bigbertha.local import chart

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("BIGBERTHA_SHARED", ROOT.parent / "shared"))
RELEASE = "bigbertha"
NAMESPACE = "bigbertha"
KUBE_VERSION = "v1.30.0"
# Each environment as a user installs it: the values files layered after the chart defaults.
# demo.yaml is an overlay on local.yaml (`bigbertha demo`), shared-cluster.yaml on prod.yaml (a
# cluster that runs its own Prometheus Operator and Argo); test_chart checks every file is here.
ENV_FILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "dev": ("dev",),
    "local": ("local",),
    "local+demo": ("local", "demo"),
    "prod": ("prod",),
    "prod+shared-cluster": ("prod", "shared-cluster"),
}
ENVS = tuple(ENV_FILES)


@dataclass(frozen=True)
class Release:
    """A release name and the namespace it is installed in."""

    name: str
    namespace: str

    def __str__(self) -> str:
        return self.name


# The name the docs use, and another name in another namespace: names, wiring and selectors must
# hold for any release (fullnameOverride on the subcharts; no object name derives from it).
RELEASES = (Release(RELEASE, NAMESPACE), Release("llmops", "ml-platform"))
# The kinds whose CRDs ci/install-crds.sh installs, and the API versions a render sees.
CUSTOM_KINDS = chart.CUSTOM_KINDS
API_VERSIONS = list(chart.API_VERSIONS)
deep_merge = chart.merge_values  # Helm's -f layering


def env_files(env: str) -> list[Path]:
    return [ROOT / "values" / f"{name}.yaml" for name in ENV_FILES[env]]


def cluster_values(env: str) -> dict[str, Any]:
    """The facts of the cluster an environment deploys to, as the BigBertha ApplicationSet passes
    them from gitops/environments/<env>.yaml (the API server's CIDRs); {} for the defaults."""
    files = ENV_FILES[env]
    path = ROOT / "gitops" / "environments" / f"{files[0]}.yaml" if files else None
    if path is None or not path.is_file():
        return {}
    cidrs = yaml.safe_load(yaml.safe_load(path.read_text())["apiServerCIDRs"])
    return {"networkPolicy": {"apiServerCIDRs": cidrs}}


def env_values(env: str) -> dict[str, Any]:
    """The user-supplied values of one environment, its files merged as `helm -f a -f b` does,
    with its cluster's facts (cluster_values)."""
    return chart.load_values(env_files(env), cluster_values(env))


@functools.cache
def _subcharts_present() -> None:
    """Helm renders without a dependency missing from charts/: refuse that partial release."""
    pins = yaml.safe_load((ROOT / "Chart.yaml").read_text())["dependencies"]
    missing = [
        f"{d['name']}-{d['version']}.tgz"
        for d in pins
        if not (ROOT / "charts" / f"{d['name']}-{d['version']}.tgz").is_file()
    ]
    assert not missing, f"charts/ lacks {', '.join(missing)}: run `make deps`"


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    api_versions: list[str] | None = None,
    kube_version: str = KUBE_VERSION,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce it."""
    _subcharts_present()
    return chart.render_templates(
        values,
        release=release,
        namespace=namespace,
        api_versions=API_VERSIONS if api_versions is None else api_versions,
        kube_version=kube_version,
    )


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render, each tagged with its template under `__template`."""
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.load_all(text, Loader=yaml.CSafeLoader):
            if doc:
                doc["__template"] = path
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return documents(render_raw(values, **kwargs))


@functools.cache
def render_env_raw(env: str, release: Release = RELEASES[0]) -> dict[str, str]:
    """One render per environment and release per session (tests only read it)."""
    return render_raw(env_values(env), release=release.name, namespace=release.namespace)


@functools.cache
def render_env(env: str, release: Release = RELEASES[0]) -> list[dict[str, Any]]:
    return documents(render_env_raw(env, release))


def installs(env: str, name: str) -> bool:
    """Whether `env` installs subchart `name` (its `enabled`, values.yaml's default under the
    environment's files)."""
    values = deep_merge(yaml.safe_load((ROOT / "values.yaml").read_text()), env_values(env))
    return bool((values.get(name) or {}).get("enabled", True))


# What a cluster already runs where an environment leaves our operators off
# (values/shared-cluster.yaml): the pinned charts with their own defaults, each installed as most
# clusters install it (kube-prometheus-stack in `monitoring`, argo-events in `argo-events`).
EXISTING = {
    "kube-prometheus-stack": Release("kube-prometheus-stack", "monitoring"),
    "argo-events": Release("argo-events", "argo-events"),
}


@functools.cache
def existing(name: str) -> list[dict[str, Any]]:
    """The objects of the cluster's own install of the pinned chart `name` (EXISTING)."""
    (archive,) = (ROOT / "charts").glob(f"{name}-[0-9]*.tgz")
    docs = documents(
        chart.render_templates(
            {},
            chart_dir=archive,
            release=EXISTING[name].name,
            namespace=EXISTING[name].namespace,
            api_versions=API_VERSIONS,
            kube_version=KUBE_VERSION,
        )
    )
    for doc in docs:  # `subchart` names it; nothing takes it for ours
        doc["__template"] = f"<cluster>/charts/{doc['__template']}"
    return docs


def cluster_docs(env: str, release: Release = RELEASES[0]) -> list[dict[str, Any]]:
    """The release and what the cluster already runs beside it: the objects our wiring and
    network policies are checked against."""
    docs = render_env(env, release)
    for name in EXISTING:
        if not installs(env, name):
            docs = docs + existing(name)
    return docs


def manifest_text(
    env: str, release: Release = RELEASES[0], *, subcharts: bool | None = None
) -> str:
    """The render as one multi-document YAML stream (what `helm template` prints): all of it,
    or only our templates' (subcharts=False) or only the subcharts' (subcharts=True)."""
    parts = []
    for path, text in sorted(render_env_raw(env, release).items()):
        if not (path.endswith((".yaml", ".yml")) and text.strip()):
            continue
        if subcharts is not None and (path.split("/")[1] == "charts") != subcharts:
            continue
        parts.append(f"---\n# Source: {path}\n{text.strip()}\n")
    return "".join(parts)


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without our `__template` tag."""
    return {k: v for k, v in doc.items() if k != "__template"}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def replicas(docs: list[dict[str, Any]], workload: dict[str, Any]) -> int:
    """The pods a Deployment or StatefulSet runs at rest: its spec.replicas, or where an
    autoscaler owns the count (a KEDA ScaledObject or an HPA targets it, and the workload sets
    none) the autoscaler's minimum."""
    spec = workload["spec"]
    if "replicas" in spec:
        return int(spec["replicas"])
    name = workload["metadata"]["name"]
    for scaler in find(docs, "ScaledObject") + find(docs, "HorizontalPodAutoscaler"):
        target = scaler["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") == workload["kind"] and target["name"] == name:
            s = scaler["spec"]
            return int(s.get("minReplicas", s.get("minReplicaCount", 1)))
    return 1


def subchart(doc: dict[str, Any]) -> str | None:
    """The (innermost) subchart whose template rendered `doc`; None for our own templates."""
    parts = doc["__template"].split("/")
    charts = [i for i, part in enumerate(parts) if part == "charts"]
    return parts[charts[-1] + 1] if charts else None


def ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects our own templates render (the subcharts' are checked where stated)."""
    return [d for d in docs if subchart(d) is None]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every Deployment, StatefulSet and plain Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]


def workflow_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(WorkflowTemplate/template name, template) of every container step."""
    for wt in find(docs, "WorkflowTemplate"):
        for tpl in wt["spec"]["templates"]:
            if "container" in tpl:
                yield f"{wt['metadata']['name']}/{tpl['name']}", tpl


def gjson(data: Any, path: str) -> str | None:
    """What an Argo Events Sensor reads at a gjson `path` of the event data: gjson's
    Result.String() (objects as raw JSON), or None where Result.Exists() is false. The event
    data travels as compact JSON, as on the wire. pygjson is a port of tidwall/gjson."""
    result = pygjson.get(json.dumps(data, separators=(",", ":"), ensure_ascii=False), path)
    return result.to_str() if result.exists() else None


PLACEHOLDERS = {
    "inputs.parameters.alert-name": "BigBerthaNegativeFeedbackHigh",
    "inputs.parameters.alert-labels": '{"alertname":"BigBerthaNegativeFeedbackHigh"}',
    "inputs.parameters.bucket": "documents",
    "inputs.parameters.key": "docs/handbook 2026-08 café.pdf",
    "inputs.parameters.event-name": "s3:ObjectCreated:Put",
    "inputs.parameters.alert-episode": "eaa2de8d1f",
    "outputs.parameters.decision.path": "/tmp/retrain-decision",
    "inputs.parameters.prefix": "s3://documents/handbooks/",
    "inputs.parameters.batch-size": "100",
    "outputs.parameters.batches.path": "/tmp/batches.json",
    "inputs.parameters.batch": '{"batch": 0, "prefix": "s3://documents/handbooks/", '
    '"first": "handbooks/a.pdf", "last": "handbooks/k.pdf", "count": 100}',
    "outputs.parameters.summary.path": "/tmp/summary.json",
    "inputs.parameters.summaries": '["{\\"batch\\": 0, \\"totals\\": {}}"]',
    "workflow.parameters.alert-name": "BigBerthaNegativeFeedbackHigh",
    "workflow.parameters.alert-labels": '{"alertname":"BigBerthaNegativeFeedbackHigh"}',
    "workflow.name": "bigbertha-retrain-493827",
    "workflow.status": "Failed",
    "workflow.failures": '[{"displayName":"finetune","message":"OOMKilled"}]',
}
