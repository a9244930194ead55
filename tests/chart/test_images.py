"""Every container image the release runs, in every environment: pinned, none from the retired
docker.io/bitnami catalogue, and listed with its pin in docs/air-gapped.md (the list a mirror
needs). The images the operators start are included: the Workflow executor, the EventSource and
Sensor image, the EventBus' JetStream images, Prometheus' config reloader.

The list in docs/air-gapped.md is generated: on drift the test fails with the new list, and
BIGBERTHA_REGENERATE=1 writes it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.chart.render import ENVS, ROOT, find, render_env, subchart

DOC = ROOT / "docs" / "air-gapped.md"
START = (
    "<!-- images:start (generated: BIGBERTHA_REGENERATE=1 pytest tests/chart/test_images.py) -->"
)
END = "<!-- images:end -->"
RETIRED = ("docker.io/bitnami/", "docker.io/bitnamilegacy/")


def normalize(image: str) -> str:
    """The full reference a container runtime pulls: registry and `library/` made explicit."""
    first, _, rest = image.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        image = f"docker.io/{image}" if rest else f"docker.io/library/{image}"
    elif first == "docker.io" and "/" not in rest.split(":")[0].split("@")[0]:
        image = f"docker.io/library/{rest}"
    return image


def _pod_images(spec: dict[str, Any]) -> Iterator[str]:
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        if isinstance(c.get("image"), str):
            yield c["image"]


def images(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """image -> the charts (or operators) that run it."""
    found: dict[str, set[str]] = {}

    def add(image: str, by: str) -> None:
        found.setdefault(normalize(image), set()).add(by)

    for d in docs:
        by = subchart(d) or "bigbertha"
        spec = d.get("spec") or {}
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            for image in _pod_images(spec["template"]["spec"]):
                add(image, by)
            for c in spec["template"]["spec"]["containers"]:
                args = [str(a) for a in c.get("args") or []]
                for i, arg in enumerate(args):  # images the operators start
                    if arg == "--executor-image":
                        add(args[i + 1], "argo-workflows (Workflow executor)")
                    elif arg.startswith("--prometheus-config-reloader="):
                        add(arg.split("=", 1)[1], "kube-prometheus-stack (config reloader)")
                for e in c.get("env") or []:
                    if e["name"] == "ARGO_EVENTS_IMAGE":
                        add(e["value"], "argo-events (EventSource and Sensor pods)")
        elif d["kind"] == "Pod":
            for image in _pod_images(spec):
                add(image, by)
        elif d["kind"] in ("Prometheus", "Alertmanager") and spec.get("image"):
            add(spec["image"], by)
        elif d["kind"] == "WorkflowTemplate":
            for tpl in spec.get("templates") or []:
                if "container" in tpl:
                    add(tpl["container"]["image"], by)
    for bus in find(docs, "EventBus"):
        version = bus["spec"]["jetstream"]["version"]
        configs = [
            c
            for c in find(docs, "ConfigMap")
            if c["metadata"]["name"].endswith("argo-events-controller-manager")
        ]
        if not configs:
            continue  # the cluster's own controller (values/shared-cluster.yaml) brings its images
        loaded = yaml.safe_load(configs[0]["data"]["controller-config.yaml"])
        for v in loaded["eventBus"]["jetstream"]["versions"]:
            if v["version"] == version:
                for key in ("natsImage", "metricsExporterImage", "configReloaderImage"):
                    add(v[key], "argo-events (EventBus JetStream)")
    return found


def all_images() -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for env in ENVS:
        for image, by in images(render_env(env)).items():
            merged.setdefault(image, set()).update(by)
    return merged


def pin(image: str) -> str:
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


def table(found: dict[str, set[str]]) -> str:
    lines = [START, "", "| Image | Pin | Run by |", "|---|---|---|"]
    for image in sorted(found):
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        lines.append(f"| `{repository}` | `{pin(image)}` | {', '.join(sorted(found[image]))} |")
    return "\n".join([*lines, "", END])


def test_every_image_is_pinned_and_none_is_from_the_retired_bitnami_catalogue() -> None:
    found = all_images()
    assert len(found) > 20, sorted(found)
    assert {"argo-workflows (Workflow executor)", "argo-events (EventBus JetStream)"} <= {
        b for by in found.values() for b in by
    }
    unpinned = [i for i in found if pin(i) in ("", "latest") or pin(i).endswith("-latest")]
    assert not unpinned, f"images without a fixed tag or digest: {unpinned}"
    retired = [i for i in found if i.startswith(RETIRED)]
    assert not retired, f"images from the retired docker.io/bitnami catalogue: {retired}"


def test_air_gapped_doc_lists_every_image_with_its_pin() -> None:
    expected = table(all_images())
    text = DOC.read_text()
    current = re.search(re.escape(START) + r".*?" + re.escape(END), text, flags=re.S)
    if os.environ.get("BIGBERTHA_REGENERATE") == "1":
        text = text.replace(current[0], expected) if current else f"{text.rstrip()}\n\n{expected}\n"
        DOC.write_text(text)
        return
    assert current and current[0] == expected, (
        "docs/air-gapped.md's image list is outdated: BIGBERTHA_REGENERATE=1 pytest "
        f"tests/chart/test_images.py writes:\n{expected}"
    )


def test_normalize_makes_the_registry_explicit() -> None:
    assert normalize("busybox:1.38.0") == "docker.io/library/busybox:1.38.0"
    assert normalize("milvusdb/milvus:v2.6.15") == "docker.io/milvusdb/milvus:v2.6.15"
    assert normalize("docker.io/redis:7") == "docker.io/library/redis:7"
    assert normalize("quay.io/minio/minio:RELEASE.x") == "quay.io/minio/minio:RELEASE.x"
    assert normalize("bitnami/postgresql:17").startswith(RETIRED)
