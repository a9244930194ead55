"""promtool on the chart's rendered PrometheusRules: the rule file the operator mounts, and
`promtool test rules` on it (test_monitoring.py, test_canary.py)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.services import require_binary


def rules_yaml(rule: dict[str, Any], *, annotations: bool = True) -> str:
    """A Prometheus rule file from a PrometheusRule's groups (what the operator mounts)."""
    groups = copy.deepcopy(rule["spec"]["groups"])
    if not annotations:
        # promtool compares annotations exactly; their wording is checked elsewhere.
        for group in groups:
            for item in group["rules"]:
                item.pop("annotations", None)
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


def run_promtool(tmp_path: Path, rules_text: str, tests: list[dict[str, Any]]) -> str:
    """`promtool test rules` on these rules and unit tests; its output (asserts it passed)."""
    promtool = require_binary("promtool")
    (tmp_path / "rules.yaml").write_text(rules_text)
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
