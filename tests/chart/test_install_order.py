"""Install order: every custom kind the chart renders has its CRD applied by ci/install-crds.sh
from the pinned subchart archives before the release, and no subchart also owns it."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import crds
from tests.chart.render import CUSTOM_KINDS, ENVS, ROOT, render, render_env

SCRIPT = (ROOT / "ci" / "install-crds.sh").read_text()
TABLE = re.findall(r'^\s+"([^|"]+)\|([^|"]+)\|(file|template)"$', SCRIPT, flags=re.M)
PINS = {
    d["name"]: d["version"]
    for d in yaml.safe_load((ROOT / "Chart.yaml").read_text())["dependencies"]
}


def _rendered_kinds() -> set[tuple[str, str]]:
    docs = [d for env in ENVS for d in render_env(env)]
    docs += render(
        {
            "gitops": {
                "enabled": True,
                "repoURL": "https://git.example/bb.git",
                "targetRevision": "main",
            }
        }
    )
    return {(d["apiVersion"], d["kind"]) for d in docs if d["apiVersion"] in CUSTOM_KINDS}


# Kinds whose CRDs come with a cluster-wide operator the chart does not pin, installed before
# the release (docs/gpu.md, "Scaling on load"): KEDA registers the cluster's one
# external.metrics.k8s.io APIService, so it cannot be a per-release subchart. templates/*
# refuse to render them (crdCheck) while the cluster lacks the CRD.
OPERATOR_KINDS = {"ScaledObject"}


def _shared_crds(shared: Path) -> list[dict[str, Any]]:
    return list(json.loads((shared / "crds" / "PROVENANCE.json").read_text()).values())


def _provenance(shared: Path) -> dict[str, dict[str, Any]]:
    """kind -> {name, version, path} of the subchart file its CRD comes from. CRDs of charts we
    do not pin (KEDA, Kubeflow Trainer) are left out: a rendered kind of theirs then fails below,
    since ci/install-crds.sh applies only what the pinned archives hold."""
    out = {}
    for entry in json.loads((shared / "crds" / "PROVENANCE.json").read_text()).values():
        match = re.search(
            r"charts/(?P<name>[^/]+)/(?P<path>\S+) \(chart (?P<version>[\d.]+)", entry["source"]
        )
        if match is None or match["name"] not in PINS:
            continue
        out[entry["kind"]] = {
            **match.groupdict(),
            "versions": [v["name"] for v in entry["versions"]],
        }
    return out


def test_the_script_installs_from_the_pinned_archives() -> None:
    assert TABLE, "no CRD table found in ci/install-crds.sh"
    for archive, _, _ in TABLE:
        name, version = re.fullmatch(r"(.+)-([\d.]+)\.tgz", archive).groups()  # type: ignore[union-attr]
        assert PINS[name] == version, f"{archive}: Chart.yaml pins {name} {PINS[name]}"
    assert "--server-side" in SCRIPT and "set -euo pipefail" in SCRIPT


def test_every_custom_kind_rendered_is_covered(shared_dir: Path) -> None:
    provenance = _provenance(shared_dir)
    kinds = _rendered_kinds()
    assert {k for _, k in kinds} >= {
        "EventBus",
        "EventSource",
        "Sensor",
        "WorkflowTemplate",
        "ServiceMonitor",
        "Application",
    }
    for api_version, kind in kinds:
        source = provenance.get(kind)
        crd = crds.archive_crd(kind)
        if source is None and crd is not None:  # e.g. kube-prometheus-stack's Prometheus
            name, version = re.fullmatch(r"(.+)-([\d.]+)\.tgz", crd.archive).groups()  # type: ignore[union-attr]
            path = crd.path.split("/", 1)[1]
            source = {"name": name, "version": version, "path": path, "versions": crd.versions}
        if kind in OPERATOR_KINDS:  # installed with their operator, before the chart
            assert kind in {e["kind"] for e in _shared_crds(shared_dir)}, kind
            assert kind not in SCRIPT, f"{kind}: its operator owns the CRD, not install-crds.sh"
            continue
        assert source, f"{kind}: no pinned CRD in ../shared/crds or the chart archives"
        assert api_version.split("/")[1] in source["versions"], f"{kind} {api_version} not served"
        archive = f"{source['name']}-{source['version']}.tgz"
        inside = f"{source['name']}/{source['path']}"
        covered = [p for a, p, _ in TABLE if a == archive and fnmatch.fnmatch(inside, p)]
        assert covered, f"{kind}: ci/install-crds.sh does not apply {archive}:{inside}"
        assert PINS[source["name"]] == source["version"]


@pytest.mark.parametrize("subchart", ["argo-workflows", "argo-events", "argo-cd"])
def test_argo_subcharts_do_not_also_install_the_crds(subchart: str) -> None:
    values = yaml.safe_load((ROOT / "values.yaml").read_text())
    assert values[subchart]["crds"]["install"] is False, (
        f"{subchart}: the release would fight ci/install-crds.sh over the CRDs it applied"
    )
    for path in sorted((ROOT / "values").glob("*.yaml")):
        overlay = yaml.safe_load(path.read_text())
        assert overlay.get(subchart, {}).get("crds", {}).get("install") in (None, False)


def test_docs_run_the_script_before_the_release() -> None:
    doc = (ROOT / "docs" / "install.md").read_text()
    assert doc.index("ci/install-crds.sh") < doc.index("helm install")
