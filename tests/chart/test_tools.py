"""The rendered manifests pass the field's linters: yamllint, promtool (alert rules) and checkov
(security misconfigurations, zero failed checks on values/prod.yaml)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import ENVS, ROOT, find, manifest_text, render_env

CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
# Rendered output: Helm's toYaml writes unindented sequences; long lines are data (dashboard
# JSON, alert descriptions). Everything else is yamllint's default.
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: disable, document-start: {present: true},"
    " truthy: {check-keys: false}, indentation: {indent-sequences: whatever}}}"
)


def _tool(name: str, path: str | Path | None = None) -> str:
    found = str(path) if path and Path(path).exists() else shutil.which(name)
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: `make setup` installs it")
        pytest.skip(f"{name} is not installed (make setup)")
    return found


def test_rendered_output_passes_yamllint(env: str, tmp_path: Path) -> None:
    out = tmp_path / f"{env}.yaml"
    out.write_text(manifest_text(env))
    result = subprocess.run(
        [_tool("yamllint"), "-f", "parsable", "-d", YAMLLINT_CONFIG, str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_values_files_pass_yamllint() -> None:
    files = [ROOT / "values.yaml", *sorted((ROOT / "values").glob("*.yaml")), ROOT / "Chart.yaml"]
    config = "{extends: default, rules: {line-length: {max: 300}, document-start: disable}}"
    result = subprocess.run(
        [_tool("yamllint"), "-f", "parsable", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def _rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for rule in find(docs, "PrometheusRule") for g in rule["spec"]["groups"]]


@pytest.mark.parametrize("env", ENVS)
def test_rendered_alert_rules_pass_promtool(env: str, tmp_path: Path) -> None:
    groups = _rule_groups(render_env(env))
    if not groups and not (ROOT / "templates" / "monitoring").is_dir():
        pytest.skip("templates/monitoring (the telemetry part) renders no PrometheusRule yet")
    assert groups, f"{env}: no PrometheusRule rendered"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        [_tool("promtool", "/usr/bin/promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_checkov_finds_no_failed_check_in_prod(tmp_path: Path) -> None:
    """Skips are allowed only as `checkov.io/skip*` annotations with a written reason."""
    manifest = tmp_path / "prod.yaml"
    manifest.write_text(manifest_text("prod"))
    result = subprocess.run(
        [
            _tool("checkov", CHECKOV),
            "--framework",
            "kubernetes",
            "-f",
            str(manifest),
            "-o",
            "json",
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 100, "checkov checked nothing?"


def test_checkov_skips_carry_a_reason() -> None:
    for env in ENVS:
        for doc in render_env(env):
            for key, value in doc["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert check.startswith("CKV") and len(reason.strip()) > 15, (key, value)
