"""A good neighbour in a shared cluster: what each install mode creates outside its namespace
(cluster-scoped objects, objects in other namespaces, DaemonSets on every node) is exactly what
docs/install.md's table says, and with the cluster's own operators (values/shared-cluster.yaml)
it is nothing."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from tests.chart.render import ROOT, Release, find, render_env, subchart

# Kinds without a namespace that a chart can render.
CLUSTER_SCOPED = {
    "APIService",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
}
# docs/install.md's rows, by the values files they name.
ROW_ENVS = {
    "`values/prod.yaml` (and dev, local, the defaults)": ("prod", "dev", "local", "default"),
    "`values/prod.yaml` + `values/shared-cluster.yaml`": ("prod+shared-cluster",),
}


def footprint(docs: list[dict[str, Any]], release: Release) -> Counter[tuple[str, str]]:
    """(chart, kind) -> how many objects reach beyond the release namespace."""
    found: Counter[tuple[str, str]] = Counter()
    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        if (
            doc["kind"] in CLUSTER_SCOPED
            or doc["kind"] == "DaemonSet"
            or (namespace and namespace != release.namespace)
        ):
            found[(subchart(doc) or "bigbertha", doc["kind"])] += 1
    return found


def _documented() -> dict[str, Counter[tuple[str, str]]]:
    """The table in docs/install.md: its mode column -> (chart, kind) counts."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text.split("### Installing beside what the cluster runs", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for mode, objects in re.findall(r"^\| (`values/[^|]+?) \| ([^|]+) \|$", section, re.M):
        counts: Counter[tuple[str, str]] = Counter()
        for chart, items in re.findall(r"([\w-]+): ([^:]+?)(?=;? [\w-]+: |$)", objects.strip()):
            for n, kind in re.findall(r"(\d+) (\w+)", re.sub(r"\([^)]*\)", "", items)):
                counts[(chart, kind)] += int(n)
        rows[mode] = counts
    return rows


def test_the_documented_table_covers_each_mode() -> None:
    assert set(_documented()) == set(ROW_ENVS)


@pytest.mark.parametrize(
    ("mode", "env"), [(m, e) for m, envs in ROW_ENVS.items() for e in envs], ids=lambda v: v[:24]
)
def test_what_each_mode_creates_outside_its_namespace_is_documented(
    mode: str, env: str, release: Release
) -> None:
    assert footprint(render_env(env, release), release) == _documented()[mode], (
        f"{env}: docs/install.md's table is not what the render creates"
    )


def test_with_the_clusters_operators_nothing_cluster_wide_is_created(release: Release) -> None:
    """The done-when of issue 23: prod in the existing-monitoring mode has no cluster-wide
    monitoring object, and no subchart brings a controller of its own."""
    docs = render_env("prod+shared-cluster", release)
    assert footprint(docs, release) == Counter()
    charts = {subchart(d) for d in docs}
    assert not charts & {"kube-prometheus-stack", "argo-workflows", "argo-events"}, charts
    # Ours are still all there, for the cluster's controllers to pick up.
    for kind in ("ServiceMonitor", "PrometheusRule", "AlertmanagerConfig", "EventBus", "Sensor"):
        assert find(docs, kind), f"{kind} missing in the shared-cluster mode"


def test_the_bundled_argo_controllers_are_namespaced(release: Release) -> None:
    docs = render_env("prod", release)
    (controller,) = [
        d
        for d in find(docs, "Deployment")
        if subchart(d) == "argo-events" and "controller" in d["metadata"]["name"]
    ]
    assert "--namespaced" in controller["spec"]["template"]["spec"]["containers"][0]["args"]
    rbac = [d for d in docs if subchart(d) in ("argo-events", "argo-workflows")]
    assert not [d for d in rbac if d["kind"].startswith("Cluster")], "a ClusterRole for Argo"
