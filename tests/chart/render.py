"""Render the umbrella chart offline with Helm's own engine (helm-python-sdk) and index the result.

A fresh Chart is loaded for every render (the SDK's loaded chart is mutated by a render). The API
versions passed are those the cluster has once ci/install-crds.sh has run: the group/versions and
the group/version/Kind of every custom kind the chart renders (templates/validate.yaml checks them).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
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
# The chart defaults and every environment overlay in values/ (each is rendered and checked).
ENVS = ("default", *sorted(p.stem for p in (ROOT / "values").glob("*.yaml")))
# The kinds whose CRDs ci/install-crds.sh installs, and the API versions a render sees.
CUSTOM_KINDS = chart.CUSTOM_KINDS
API_VERSIONS = list(chart.API_VERSIONS)
deep_merge = chart.merge_values  # Helm's -f layering


def env_values(env: str) -> dict[str, Any]:
    """The user-supplied values of one environment ('default' = none)."""
    if env == "default":
        return {}
    return yaml.safe_load((ROOT / "values" / f"{env}.yaml").read_text()) or {}


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    api_versions: list[str] | None = None,
    kube_version: str = KUBE_VERSION,
) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce it."""
    return chart.render_templates(
        values,
        release=release,
        namespace=NAMESPACE,
        api_versions=API_VERSIONS if api_versions is None else api_versions,
        kube_version=kube_version,
    )


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render, each tagged with its template under `__template`."""
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                docs.append(doc)
    return docs


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return documents(render_raw(values, **kwargs))


@functools.cache
def render_env_raw(env: str) -> dict[str, str]:
    """One render per environment per session (tests only read it)."""
    return render_raw(env_values(env))


def render_env(env: str) -> list[dict[str, Any]]:
    return _render_env_docs(env)


@functools.cache
def _render_env_docs(env: str) -> list[dict[str, Any]]:
    return documents(render_env_raw(env))


def manifest_text(env: str) -> str:
    """The whole render as one multi-document YAML stream (what `helm template` prints)."""
    parts = []
    for path, text in sorted(render_env_raw(env).items()):
        if path.endswith((".yaml", ".yml")) and text.strip():
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
