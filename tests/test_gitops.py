"""gitops/: the ApplicationSets' generated Applications are valid and agree with the chart.

../shared/schemas has no ApplicationSet schema (its CRD is not among the pinned ones), so each
ApplicationSet is expanded here the way Argo CD's git-files, list and matrix generators do, and
every Application it would create is validated against application_v1alpha1.json.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.render import deep_merge, env_values, render

ROOT = Path(__file__).resolve().parent.parent
GITOPS = ROOT / "gitops"
OPERATORS = GITOPS / "operators-applicationset.yaml"
PLATFORM = GITOPS / "bigbertha-applicationset.yaml"
PARAM = re.compile(r"\{\{\s*\.([A-Za-z_][\w.]*)\s*\}\}")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def expand(generator: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter sets of a generator (git files, list, matrix), as Argo CD computes them."""
    if "list" in generator:
        return [dict(e) for e in generator["list"]["elements"]]
    if "git" in generator:
        params = []
        for spec in generator["git"]["files"]:
            files = sorted(
                p
                for p in ROOT.rglob("*.yaml")
                if fnmatch.fnmatch(str(p.relative_to(ROOT)), spec["path"])
            )
            assert files, f"git generator path {spec['path']} matches no file"
            params += [load(f) for f in files]
        return params
    if "matrix" in generator:
        first, second = (expand(g) for g in generator["matrix"]["generators"])
        return [{**a, **b} for a, b in itertools.product(first, second)]
    raise AssertionError(f"generator not understood by this test: {sorted(generator)}")


def substitute(node: Any, params: dict[str, Any]) -> Any:
    """goTemplate with missingkey=error: every {{.key}} in every string of the template."""
    if isinstance(node, dict):
        return {k: substitute(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, params) for v in node]
    if isinstance(node, str):

        def value(match: re.Match[str]) -> str:
            assert match[1] in params, f"template uses {{{{.{match[1]}}}}}, no generator sets it"
            return str(params[match[1]])

        return PARAM.sub(value, node)
    return node


def applications(appset: dict[str, Any]) -> list[dict[str, Any]]:
    spec = appset["spec"]
    assert spec["goTemplate"] is True and spec["goTemplateOptions"] == ["missingkey=error"]
    params = [p for g in spec["generators"] for p in expand(g)]
    apps = []
    for p in params:
        rendered = substitute(spec["template"], p)
        apps.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **rendered})
    return apps


@pytest.fixture(scope="module")
def schema(shared_dir: Path) -> dict[str, Any]:
    index = json.loads((shared_dir / "schemas/INDEX.json").read_text())
    assert "applicationset_v1alpha1.json" not in index, (
        "an ApplicationSet schema exists now: use it"
    )
    loaded: dict[str, Any] = json.loads(
        (shared_dir / "schemas/application_v1alpha1.json").read_text()
    )
    return loaded


#: values/ files that are not environments of their own (no cluster to sync).
OVERLAYS = {
    "demo": "layered on values/local.yaml by `bigbertha demo` on one machine",
    "shared-cluster": "layered on values/prod.yaml where the cluster runs its own operators",
}


def environments() -> set[str]:
    return {p.stem for p in (ROOT / "values").glob("*.yaml")} - set(OVERLAYS)


def test_one_gitops_environment_per_values_file() -> None:
    envs = {load(p)["env"]: p for p in (GITOPS / "environments").glob("*.yaml")}
    assert set(envs) == environments()
    for env, path in envs.items():
        assert path.stem == env
        assert set(load(path)) == {"env", "server", "namespace", "revision", "apiServerCIDRs"}
        assert isinstance(yaml.safe_load(load(path)["apiServerCIDRs"]), list), path


@pytest.mark.parametrize("path", [OPERATORS, PLATFORM], ids=lambda p: p.name)
def test_generated_applications_are_valid(path: Path, schema: dict[str, Any]) -> None:
    appset = load(path)
    assert (appset["apiVersion"], appset["kind"]) == ("argoproj.io/v1alpha1", "ApplicationSet")
    apps = applications(appset)
    assert apps
    names = [a["metadata"]["name"] for a in apps]
    assert len(set(names)) == len(names), f"duplicate Application names: {names}"
    validator = jsonschema.Draft7Validator(schema)
    for app in apps:
        errors = sorted(validator.iter_errors(app), key=lambda e: list(e.path))
        assert not errors, f"{app['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
        )
        assert app["spec"]["syncPolicy"]["syncOptions"][0] == "CreateNamespace=true"
        assert (
            app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            == (appset["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        )


def test_root_application_is_valid_and_picks_both_applicationsets(schema: dict[str, Any]) -> None:
    root = load(GITOPS / "root-application.yaml")
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(root))
    assert not errors, [e.message for e in errors]
    include = root["spec"]["source"]["directory"]["include"]
    picked = sorted(p.name for p in GITOPS.glob(include))
    assert picked == sorted([OPERATORS.name, PLATFORM.name])


def wave(path: Path) -> int:
    return int(load(path)["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])


def test_operators_sync_before_bigbertha() -> None:
    assert wave(OPERATORS) < wave(PLATFORM)


def test_operators_match_the_umbrella_pins_and_values() -> None:
    chart = load(ROOT / "Chart.yaml")
    deps = {d["name"]: d for d in chart["dependencies"]}
    values = load(ROOT / "values.yaml")
    overlay = load(GITOPS / "values/argocd.yaml")
    (matrix,) = load(OPERATORS)["spec"]["generators"]
    operators = matrix["matrix"]["generators"][1]["list"]["elements"]
    for op in operators:
        name = op["operator"]
        assert op["version"] == deps[name]["version"], f"{name}: Chart.yaml pins another version"
        assert op["repoURL"].rstrip("/") == deps[name]["repository"].rstrip("/")
        # The umbrella's block, with the CRDs installed here instead of by ci/install-crds.sh.
        expected = {k: v for k, v in values[name].items() if k != "enabled"}
        crds_key = "enabled" if name == "kube-prometheus-stack" else "install"
        expected = deep_merge(expected, {"crds": {crds_key: True}})
        assert yaml.safe_load(op["values"]) == expected, f"{name}: values differ from values.yaml"
        # ... and the BigBertha Application leaves that operator to this one.
        assert overlay[name] == {"enabled": False}
    assert {op["operator"] for op in operators} | {"argo-cd"} == {
        k for k, v in overlay.items() if k in deps and v == {"enabled": False}
    }


@pytest.mark.parametrize("env", sorted(environments()))
def test_chart_renders_as_argo_cd_renders_it(env: str) -> None:
    (app,) = [
        a
        for a in applications(load(PLATFORM))
        if a["metadata"]["labels"]["bigbertha.io/environment"] == env
    ]
    merged: dict[str, Any] = {}
    helm = app["spec"]["source"]["helm"]
    for value_file in helm["valueFiles"]:
        path = ROOT / value_file
        assert path.is_file(), f"{app['metadata']['name']}: {value_file} does not exist"
        merged = deep_merge(merged, load(path) or {})
    merged = deep_merge(merged, yaml.safe_load(helm["values"]))  # Argo CD: values over files
    assert merged == deep_merge(env_values(env), load(GITOPS / "values/argocd.yaml"))
    docs = render(merged)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "WorkflowTemplate", "Sensor"} <= kinds
    assert not [d for d in docs if d["kind"] == "Application"], "gitops.enabled leaked into GitOps"
