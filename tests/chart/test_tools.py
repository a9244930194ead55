"""The rendered manifests pass the field's linters: yamllint, promtool (alert rules) and checkov
(security misconfigurations). checkov runs once over the whole release of every environment:
our templates fail no check anywhere; the subcharts' findings on values/prod.yaml stay within
the budget, and each one left is explained in docs/hardening.md."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import ENVS, ROOT, find, manifest_text, render_env
from tests.services import missing

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
        missing(f"{name} is not installed: `make setup` installs it")
    return found


# The subcharts' output keeps its upstream style (trailing spaces, spacing); what would lose data
# is checked there too: a duplicated key silently drops a value.
YAMLLINT_SUBCHARTS = "{rules: {key-duplicates: enable}}"


@pytest.mark.parametrize(
    ("part", "config"), [("ours", YAMLLINT_CONFIG), ("subcharts", YAMLLINT_SUBCHARTS)]
)
def test_rendered_output_passes_yamllint(env: str, part: str, config: str, tmp_path: Path) -> None:
    out = tmp_path / f"{env}-{part}.yaml"
    out.write_text(manifest_text(env, subcharts=part == "subcharts"))
    assert out.stat().st_size > 1000
    result = subprocess.run(
        [_tool("yamllint"), "-f", "parsable", "-d", config, str(out)],
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


# The subcharts' checkov findings on values/prod.yaml: 260 before any hardening (issue 15).
SUBCHART_BUDGET = 105
HARDENING_DOC = ROOT / "docs" / "hardening.md"


@dataclass(frozen=True)
class Finding:
    env: str
    chart: str  # the innermost subchart whose template rendered the object; "ours" for ours
    check: str
    resource: str


def _source_of_lines(text: str) -> list[str]:
    """For each line of a manifest, the template its `# Source:` header names."""
    sources, current = [], ""
    for line in text.splitlines():
        if line.startswith("# Source: "):
            current = line[len("# Source: ") :]
        sources.append(current)
    return sources


def _chart_of(template: str) -> str:
    parts = template.split("/")
    charts = [i for i, part in enumerate(parts) if part == "charts"]
    return parts[charts[-1] + 1] if charts else "ours"


@pytest.fixture(scope="session")
def checkov_findings(tmp_path_factory: pytest.TempPathFactory) -> list[Finding]:
    """One checkov run over the whole release of every environment (one file each)."""
    tool = _tool("checkov", CHECKOV)
    folder = tmp_path_factory.mktemp("checkov")
    texts = {}
    for env in ENVS:
        texts[env] = manifest_text(env)
        (folder / f"{env}.yaml").write_text(texts[env])
    result = subprocess.run(
        [
            tool,
            "--framework",
            "kubernetes",
            "-d",
            str(folder),
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
        timeout=600,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert sum(r["summary"]["passed"] for r in reports) > 1000, "checkov checked nothing?"
    sources = {env: _source_of_lines(text) for env, text in texts.items()}
    findings = []
    for r in reports:
        for c in r.get("results", {}).get("failed_checks", []):
            env = Path(c["file_path"]).stem
            template = sources[env][c["file_line_range"][0] - 1]
            findings.append(Finding(env, _chart_of(template), c["check_id"], c["resource"]))
    return findings


# Outside prod our images are pulled IfNotPresent on purpose: values/local.yaml runs images
# loaded into kind (no registry to pull from again), and tags are immutable release versions.
OURS_OUTSIDE_PROD = {"CKV_K8S_15"}


@pytest.mark.slow
def test_checkov_finds_nothing_in_our_templates(checkov_findings: list[Finding]) -> None:
    """Skips are allowed only as `checkov.io/skip*` annotations with a written reason."""
    ours = [
        f"{f.env}: {f.check} {f.resource}"
        for f in checkov_findings
        if f.chart == "ours" and (f.env == "prod" or f.check not in OURS_OUTSIDE_PROD)
    ]
    assert not ours, "\n".join(ours)
    assert {f.env for f in checkov_findings} <= set(ENVS)


def _documented() -> dict[tuple[str, str], tuple[int, str]]:
    """(subchart, check) -> (count, reason) from docs/hardening.md's table of what remains."""
    text = HARDENING_DOC.read_text()
    table = text.split("<!-- checkov:start -->")[1].split("<!-- checkov:end -->")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"CKV2?_K8S_\d+", cells[1].strip("`")):
            rows[(cells[0].strip("`"), cells[1].strip("`"))] = (int(cells[2]), cells[3])
    return rows


@pytest.mark.slow
def test_subchart_findings_on_prod_are_within_budget_and_each_explained(
    checkov_findings: list[Finding], report_checkov: Callable[[int, dict[str, int]], None]
) -> None:
    prod = [f for f in checkov_findings if f.env == "prod" and f.chart != "ours"]
    per_chart = collections.Counter(f.chart for f in prod)
    report_checkov(len(prod), dict(per_chart.most_common()))
    actual = collections.Counter((f.chart, f.check) for f in prod)
    documented = _documented()
    table = "\n".join(f"| `{c}` | `{k}` | {n} | ... |" for (c, k), n in sorted(actual.items()))
    assert {k: n for k, (n, _) in documented.items()} == dict(actual), (
        f"docs/hardening.md's table differs from checkov's findings on prod; it should be:\n{table}"
    )
    assert all(len(reason) > 20 for _, reason in documented.values()), "every row needs a reason"
    assert len(prod) <= SUBCHART_BUDGET, f"{len(prod)} subchart findings on prod: {dict(per_chart)}"


def test_checkov_skips_carry_a_reason() -> None:
    for env in ENVS:
        for doc in render_env(env):
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert check.startswith("CKV") and len(reason.strip()) > 15, (key, value)
