"""docs/install.md's capacity table is what each environment's render asks of the cluster: the
sum of requests (CPU, memory, GPUs) of every long-running pod at its replica count, the GPUs a
fine-tuning run adds while it runs, and the storage its volume claims ask for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import ROOT, find, render_env
from tests.chart.render import replicas as at_rest

# Kubernetes quantities: binary and decimal suffixes.
_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}
ENVS = ("dev", "local", "prod")


def quantity(value: Any) -> float:
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _pods(docs: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(replicas, pod spec) of every long-running pod, the operators' custom resources included."""
    found = []
    for d in docs:
        spec = d.get("spec") or {}
        if d["kind"] in ("Deployment", "StatefulSet"):
            # Autoscaled: at rest, its minimum (docs/install.md gives the peak beside it).
            found.append((at_rest(docs, d), spec["template"]["spec"]))
        elif d["kind"] in ("Prometheus", "Alertmanager"):
            found.append((int(spec.get("replicas", 1)), {"containers": [spec]}))
        elif d["kind"] == "EventBus":
            bus = spec["jetstream"]
            found.append(
                (int(bus.get("replicas", 3)), {"containers": [bus.get("containerTemplate") or {}]})
            )
    return found


def _requests(container: dict[str, Any]) -> dict[str, Any]:
    return (container.get("resources") or {}).get("requests") or {}


def capacity(docs: list[dict[str, Any]]) -> dict[str, float]:
    """CPU cores, memory GiB and GPUs requested; GPUs a fine-tuning run adds; storage GiB."""
    cpu = memory = gpus = 0.0
    for replicas, pod in _pods(docs):
        for c in pod.get("containers") or []:
            r = _requests(c)
            cpu += replicas * quantity(r.get("cpu", 0))
            memory += replicas * quantity(r.get("memory", 0))
            gpus += replicas * quantity(r.get("nvidia.com/gpu", 0))
    finetune = max(
        (
            quantity(_requests(t["container"]).get("nvidia.com/gpu", 0))
            for wt in find(docs, "WorkflowTemplate")
            for t in wt["spec"]["templates"]
            if "container" in t
        ),
        default=0.0,
    )
    storage = 0.0
    for d in docs:
        spec = d.get("spec") or {}
        claims = []
        if d["kind"] == "StatefulSet":
            claims = [
                (int(spec.get("replicas", 1)), t["spec"])
                for t in spec.get("volumeClaimTemplates") or []
            ]
        elif d["kind"] == "PersistentVolumeClaim":
            claims = [(1, spec)]
        elif d["kind"] in ("Prometheus", "Alertmanager"):
            template = ((spec.get("storage") or {}).get("volumeClaimTemplate") or {}).get("spec")
            claims = [(int(spec.get("replicas", 1)), template)] if template else []
        elif d["kind"] == "EventBus":
            persistence = spec["jetstream"].get("persistence") or {}
            if persistence.get("volumeSize"):
                claims = [
                    (
                        int(spec["jetstream"].get("replicas", 3)),
                        {"resources": {"requests": {"storage": persistence["volumeSize"]}}},
                    )
                ]
        for replicas, claim in claims:
            storage += replicas * quantity(claim["resources"]["requests"]["storage"])
    gib = 2**30
    return {
        "cpu": round(cpu, 1),
        "memory": round(memory / gib),
        "gpus": int(gpus),
        "finetune_gpus": int(finetune),
        "storage": round(storage / gib),
    }


def _documented() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "install.md").read_text()
    section = text.split("### Capacity", 1)[1].split("\n## ", 1)[0]
    return {
        row[0]: row[1:]
        for row in (
            [cell.strip(" `") for cell in line.strip("|").split("|")]
            for line in section.splitlines()
            if line.startswith("| `")
        )
    }


@pytest.mark.parametrize("env", ENVS)
def test_the_capacity_table_is_what_the_render_requests(env: str) -> None:
    found = capacity(render_env(env))
    expected = [
        f"{found['cpu']:g}",
        str(found["memory"]),
        str(found["gpus"]),
        str(found["finetune_gpus"]),
        str(found["storage"]),
    ]
    row = _documented().get(f"values/{env}.yaml")
    assert row == expected, f"docs/install.md's capacity row for {env} should read {expected}"


def test_prod_needs_three_gpus() -> None:
    """Two inference-tier pods of one GPU each, and one for the fine-tuning step while it runs."""
    found = capacity(render_env("prod"))
    assert found["gpus"] + found["finetune_gpus"] == 3
