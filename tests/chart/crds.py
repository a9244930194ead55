"""CRDs and their schemas, from ../shared (converted, with provenance) or else from the pinned
subchart archives in charts/ (plain CRD files, e.g. kube-prometheus-stack's charts/crds/crds/).

The chart tests validate every custom resource of a render, the subcharts' included (the
Prometheus and Alertmanager objects of kube-prometheus-stack have no schema in ../shared: their
CRDs come from the same pinned archive ci/install-crds.sh applies).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.chart.render import ROOT


@dataclass(frozen=True)
class Crd:
    """Where a kind's CRD comes from: `archive` in charts/ and `path` inside it."""

    kind: str
    group: str
    archive: str
    path: str
    schemas: dict[str, dict[str, Any]] = field(hash=False, compare=False)

    @property
    def versions(self) -> list[str]:
        return list(self.schemas)


class _Loader(yaml.CSafeLoader):
    """Some CRD descriptions hold a bare `=`, which YAML 1.1 tags as a 'value': a string here."""


_Loader.add_constructor("tag:yaml.org,2002:value", _Loader.construct_yaml_str)


@functools.cache
def _crd_files(charts: Path) -> dict[tuple[str, str], str]:
    """(archive, path) -> text of every plain CRD file (in a `crds/` folder) of the archives."""
    files = {}
    for archive in sorted(charts.glob("*.tgz")):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/crds/" in member.name and member.name.endswith(".yaml"):
                    data = tar.extractfile(member)
                    text = data.read().decode() if data else ""
                    if "kind: CustomResourceDefinition" in text and "{{" not in text:
                        files[(archive.name, member.name)] = text  # templated ones: ../shared
    return files


@functools.cache
def archive_crd(kind: str, charts: Path = ROOT / "charts") -> Crd | None:
    """The CRD of `kind` in the pinned archives (parsed only where its kind appears)."""
    pattern = re.compile(rf"^\s+kind: {re.escape(kind)}$", flags=re.M)
    for (archive, path), text in _crd_files(charts).items():
        if not pattern.search(text):
            continue
        for doc in yaml.load_all(text, Loader=_Loader):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                if spec["names"]["kind"] == kind:
                    schemas = {
                        v["name"]: v["schema"]["openAPIV3Schema"]
                        for v in spec["versions"]
                        if v.get("served", True)
                    }
                    return Crd(kind, spec["group"], archive, path, schemas)
    return None


def close(node: Any) -> Any:
    """Reject unknown fields wherever the CRD does not preserve them (the API server prunes
    them silently, so a misspelt field would be lost without a word)."""
    if isinstance(node, dict):
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            close(value)
    elif isinstance(node, list):
        for value in node:
            close(value)
    return node


@functools.cache
def schema(shared: Path, kind: str, version: str) -> tuple[dict[str, Any], bool]:
    """(closed JSON schema, advisory_required) of kind/version. The Argo Events *.full.json
    schemas are built from the Go types and over-require some fields, so their `required`
    errors are advisory (shared/README)."""
    full = shared / "schemas" / f"{kind.lower()}_{version}.full.json"
    plain = shared / "schemas" / f"{kind.lower()}_{version}.json"
    if full.exists() or plain.exists():
        path = full if full.exists() else plain
        return close(json.loads(path.read_text())), full.exists()
    crd = archive_crd(kind)
    assert crd and version in crd.schemas, (
        f"{kind} {version}: no schema in {shared}/schemas and no CRD in charts/*.tgz"
    )
    return close(copy.deepcopy(crd.schemas[version])), False


@functools.cache
def _validator(shared: Path, kind: str, version: str) -> tuple[Any, bool]:
    import jsonschema

    found, advisory_required = schema(shared, kind, version)
    return jsonschema.Draft7Validator(found), advisory_required


def errors(shared: Path, doc: dict[str, Any]) -> list[str]:
    """Schema errors of a custom resource against its CRD (unknown fields refused), each naming
    the object and the path."""
    validator, advisory_required = _validator(shared, doc["kind"], doc["apiVersion"].split("/")[1])
    body = {k: v for k, v in doc.items() if k != "__template"}
    return [
        f"{doc['kind']}/{doc['metadata']['name']} {e.json_path}: {e.message}"
        for e in validator.iter_errors(body)
        if not (advisory_required and e.validator == "required")
    ]
