"""The chart as a package: pinned dependencies, documented values, schema, lint, packaging."""

from __future__ import annotations

import functools
import io
import json
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from bigbertha.local import chart as chart_module
from tests.chart.render import ENV_FILES, ENVS, ROOT, env_values, render_raw

CHART = yaml.safe_load((ROOT / "Chart.yaml").read_text())
VALUES_TEXT = (ROOT / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SUBCHARTS = [dep["name"] for dep in CHART["dependencies"]]
VALUES_FILES = sorted(p.stem for p in (ROOT / "values").glob("*.yaml"))


def test_every_values_file_is_an_environment_the_tests_render() -> None:
    layered = {name for files in ENV_FILES.values() for name in files}
    assert layered == set(VALUES_FILES), f"values/ files no environment renders: {layered}"


def test_chart_metadata_and_exact_pins() -> None:
    assert CHART["apiVersion"] == "v2" and CHART["name"] == "bigbertha"
    assert CHART["kubeVersion"].startswith(">=1.27")
    pins = {dep["name"]: dep["version"] for dep in CHART["dependencies"]}
    assert pins == {
        "milvus": "5.0.19",
        "minio": "5.4.0",
        "mlflow": "1.11.5",
        "kube-prometheus-stack": "88.5.3",
        "argo-workflows": "1.0.18",
        "argo-events": "2.4.22",
        "argo-cd": "10.1.1",
    }
    for dep in CHART["dependencies"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", dep["version"]), f"{dep['name']}: not an exact pin"
        assert dep["condition"] == f"{dep['name']}.enabled"
        assert dep["repository"].startswith("https://")
        assert VALUES[dep["name"]]["enabled"] in (True, False), f"{dep['name']}.enabled missing"


@dataclass
class ChartValues:
    """A packaged chart's default values, each dependency's defaults under its name or alias,
    the value paths its templates read (`.Values.a.b`) and its values.schema.json, if any."""

    defaults: dict[str, Any]
    reads: set[str]
    dependencies: dict[str, ChartValues]
    schema: dict[str, Any] | None = None


def _archive_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _read_chart(files: dict[str, bytes], prefix: str) -> ChartValues:
    """The chart at `prefix` (e.g. "milvus/") among an archive's files, with the charts in its
    charts/ folder (unpacked, or archives of their own)."""
    meta = yaml.safe_load(files[f"{prefix}Chart.yaml"])
    requirements = yaml.safe_load(files.get(f"{prefix}requirements.yaml", b"")) or {}
    declared = meta.get("dependencies") or requirements.get("dependencies") or []  # v2, v1
    aliases = {d["name"]: d.get("alias") or d["name"] for d in declared}
    reads = {
        path.lstrip(".")
        for name, data in files.items()
        if name.startswith(f"{prefix}templates/")
        for path in re.findall(r"\.Values((?:\.[A-Za-z0-9_]+)+)", data.decode(errors="replace"))
    }
    dependencies = {}
    for name, data in files.items():
        rest = name[len(prefix) :] if name.startswith(prefix) else ""
        if rest.startswith("charts/") and rest.count("/") == 1 and rest.endswith(".tgz"):
            nested = _archive_files(data)
            root = next(k for k in nested if k.count("/") == 1 and k.endswith("/Chart.yaml"))
            sub = _read_chart(nested, root[: -len("Chart.yaml")])
        elif rest.startswith("charts/") and rest.count("/") == 2 and rest.endswith("/Chart.yaml"):
            sub = _read_chart(files, name[: -len("Chart.yaml")])
        else:
            continue
        sub_name = sub_name_of(files, name, data)
        dependencies[aliases.get(sub_name, sub_name)] = sub
    defaults = yaml.safe_load(files.get(f"{prefix}values.yaml", b"")) or {}
    schema = files.get(f"{prefix}values.schema.json")
    return ChartValues(defaults, reads, dependencies, json.loads(schema) if schema else None)


def sub_name_of(files: dict[str, bytes], name: str, data: bytes) -> str:
    """The chart name of a charts/ entry (an unpacked Chart.yaml or a nested archive)."""
    if name.endswith("Chart.yaml"):
        return str(yaml.safe_load(data)["name"])
    nested = _archive_files(data)
    root = next(v for k, v in nested.items() if k.count("/") == 1 and k.endswith("/Chart.yaml"))
    return str(yaml.safe_load(root)["name"])


@functools.cache
def _pinned_chart(name: str, version: str) -> ChartValues:
    archive = ROOT / "charts" / f"{name}-{version}.tgz"
    assert archive.is_file(), f"{archive} is missing: run `make deps`"
    return _read_chart(_archive_files(archive.read_bytes()), f"{name}/")


def _unknown_keys(ours: Any, chart: ChartValues, path: str, at: str = "") -> list[str]:
    """Keys we set that the chart neither has in its defaults nor reads in a template. Below a
    map a template reads whole (toYaml .Values.resources, omit .Values.securityContext ...), an
    empty map, a null or a list in the defaults, the structure is the user's."""
    missing = []
    for key, value in (ours or {}).items():
        here = f"{at}.{key}" if at else key
        if not at and key in chart.dependencies:
            sub = dict(value or {})
            sub.pop("enabled", None)  # a dependency's condition, not its value
            missing += _unknown_keys(sub, chart.dependencies[key], f"{path}.{key}")
            continue
        theirs: Any = chart.defaults
        for part in here.split("."):
            theirs = theirs.get(part) if isinstance(theirs, dict) else None
        read_whole = here in chart.reads
        read_below = any(r.startswith(here + ".") for r in chart.reads)
        if theirs is None and not (read_whole or read_below):
            missing.append(f"{path}.{key}")
        elif isinstance(value, dict) and isinstance(theirs, dict) and theirs and not read_whole:
            missing += _unknown_keys(value, chart, f"{path}.{key}", here)
    return missing


@pytest.mark.parametrize("source", ["values.yaml", *[f"values/{e}.yaml" for e in VALUES_FILES]])
def test_every_subchart_key_exists_in_the_pinned_charts(source: str) -> None:
    """Helm ignores a misspelt subchart key silently: each one must be a default of the pinned
    chart (its own dependencies' included) or a value its templates read."""
    ours = yaml.safe_load((ROOT / source).read_text())
    missing = []
    for dep in CHART["dependencies"]:
        block = dict(ours.get(dep["name"]) or {})
        block.pop("enabled", None)  # the umbrella's condition, not a subchart value
        missing += _unknown_keys(block, _pinned_chart(dep["name"], dep["version"]), dep["name"])
    assert not missing, f"{source} sets keys the pinned subcharts do not have: {missing}"


@pytest.mark.parametrize("env", ENVS)
def test_subchart_schemas_accept_what_the_umbrella_passes(env: str) -> None:
    """Helm 3 and 4 validate each subchart's values against its own values.schema.json and
    strip neither the `enabled` key our `condition:` reads nor the copied `global` map
    (helm/helm pkg/chartutil/jsonschema.go ValidateAgainstSchema in 3.14, pkg/chart/common/
    util/jsonschema.go in 4): a closed schema without them would refuse the umbrella. Checked
    here with a draft-07 validator apart from Helm's own (gojsonschema up to Helm 3.18)."""
    values = chart_module.merge_values(VALUES, env_values(env))
    checked = []
    for dep in CHART["dependencies"]:
        pinned = _pinned_chart(dep["name"], dep["version"])
        if pinned.schema is None or not values[dep["name"]]["enabled"]:
            continue
        passed = chart_module.merge_values(pinned.defaults, values[dep["name"]])
        passed["global"] = chart_module.merge_values(
            pinned.defaults.get("global") or {}, values["global"]
        )
        errors = [e.message for e in jsonschema.Draft7Validator(pinned.schema).iter_errors(passed)]
        assert not errors, f"{dep['name']}: {errors}"
        checked.append(dep["name"])
    assert checked == ["mlflow"]  # the one pinned subchart with a schema
    closed = {**_pinned_chart("mlflow", "1.11.5").schema}  # type: ignore[dict-item]
    closed["properties"] = {k: v for k, v in closed["properties"].items() if k != "enabled"}
    assert list(jsonschema.Draft7Validator(closed).iter_errors({"enabled": True})), (
        "a closed schema without `enabled` refuses it"
    )


def test_a_misspelt_subchart_key_is_caught() -> None:
    minio = _pinned_chart("minio", "5.4.0")
    assert _unknown_keys({"resources": {"limits": {"cpu": 1}}}, minio, "minio") == []
    assert _unknown_keys({"resourcez": {}}, minio, "minio") == ["minio.resourcez"]
    milvus = _pinned_chart("milvus", "5.0.19")
    typo = {"etcd": {"resources": {"limits": {}}, "replicaCunt": 1}}
    assert _unknown_keys(typo, milvus, "milvus") == ["milvus.etcd.replicaCunt"]


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented_with_a_param_comment() -> None:
    # A list of objects is documented as a whole (@extra) and kept out of the table (@skip).
    documented = set(re.findall(r"^## @(?:param|extra) (\S+)", VALUES_TEXT, flags=re.M))
    undocumented = [
        leaf
        for leaf in _leaf_paths(VALUES)
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not undocumented, f"values without a `## @param` comment: {undocumented}"
    stale = [d for d in documented if not _exists(VALUES, d)]
    assert not stale, f"`## @param` comments naming no value: {stale}"


def _exists(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"chatbot": {"replicas": "three"}}, "/chatbot/replicas"),
        ({"settings": {"log": {"level": "LOUD"}}}, "/settings/log/level"),
        ({"events": {"webhook": {"endpoint": "alerts"}}}, "/events/webhook/endpoint"),
        ({"workflows": {"podGC": {"strategy": "Sometimes"}}}, "/workflows/podGC/strategy"),
        ({"chatbt": {"replicas": 2}}, "chatbt"),
    ],
)
def test_a_bad_value_fails_the_render_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(field)):
        render_raw(values)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_environment_files_are_thin_overlays_without_secret_values(name: str) -> None:
    text = (ROOT / "values" / f"{name}.yaml").read_text()
    assert not re.search(r"(?i)(password|secretKey|token|accessKey)\s*:\s*\S", text), (
        f"values/{name}.yaml holds a credential value; name an existing Secret instead"
    )
    assert yaml.safe_load(text), f"values/{name}.yaml is empty"


@pytest.mark.parametrize("env", ENVS)
def test_lint_finds_nothing_with_the_subcharts_in_place(env: str) -> None:
    """Strict lint of the umbrella renders every subchart with our values (charts/ is full)."""
    report = helm.lint(ROOT, env_values(env), strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_helmignore_keeps_the_package_to_the_chart() -> None:
    chart = helm.Chart.load(ROOT)
    try:
        shipped = [f["name"] for f in chart.files] + [t["name"] for t in chart.templates]
    finally:
        chart.close()
    for banned in (
        "src/",
        "docker/",
        "tests/",
        "bench/",
        "docs/",
        "ci/",
        "gitops/",
        ".venv",
        ".git",
        "pyproject.toml",
    ):
        assert not [f for f in shipped if f.startswith(banned)], f"package ships {banned}"
    assert any(f.startswith("values/") for f in shipped), "the environment overlays must ship"
    for needed in (
        "templates/tests/test-endpoints.yaml",
        "templates/gitops/application.yaml",
        "templates/_helpers.tpl",
        "values.schema.json",
    ):
        assert needed in shipped or needed == "values.schema.json", f"{needed} not packaged"


def test_charts_folder_holds_only_its_readme_in_git() -> None:
    readme = (ROOT / "charts" / "README.md").read_text()
    assert "helm dependency build" in readme
    ignored = (ROOT / ".gitignore").read_text()
    assert "charts/*.tgz" in ignored
