"""The chart as a package: pinned dependencies, documented values, schema, lint, packaging."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

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


@functools.cache
def _upstream_values(shared: Path, name: str, version: str) -> dict[str, Any]:
    for chart_yaml in shared.glob("upstream/*/Chart.yaml"):
        meta = yaml.safe_load(chart_yaml.read_text())
        if meta["name"] == name and str(meta["version"]) == version:
            return yaml.safe_load((chart_yaml.parent / "values.yaml").read_text()) or {}
    raise AssertionError(f"no pinned upstream defaults for {name} {version} in {shared}/upstream")


def _unknown_keys(ours: Any, theirs: Any, path: str) -> list[str]:
    """Keys we set that the subchart's defaults do not have. Below an empty map, a null or a
    list in the defaults the structure is the user's (resources, extraEnv, buckets...)."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict) or not theirs:
        return []
    missing = []
    for key, value in ours.items():
        if key not in theirs:
            missing.append(f"{path}.{key}")
        else:
            missing += _unknown_keys(value, theirs[key], f"{path}.{key}")
    return missing


@pytest.mark.parametrize("source", ["values.yaml", *[f"values/{e}.yaml" for e in VALUES_FILES]])
def test_every_subchart_key_exists_in_the_pinned_defaults(shared_dir: Path, source: str) -> None:
    ours = yaml.safe_load((ROOT / source).read_text())
    missing = []
    for dep in CHART["dependencies"]:
        theirs = _upstream_values(shared_dir, dep["name"], dep["version"])
        block = dict(ours.get(dep["name"]) or {})
        block.pop("enabled", None)  # the umbrella's condition, not a subchart value
        missing += _unknown_keys(block, theirs, dep["name"])
    assert not missing, f"{source} sets keys the pinned subcharts do not have: {missing}"


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
