"""Every benchmark in bench/ runs in CI: its `--quick` mode (small inputs, seconds) exits 0 and
its last line is one JSON object of figures. A benchmark that breaks (an API it uses changed,
a crash) fails `make test`; its full run stays `.venv/bin/python bench/<name>.py`. New files
in bench/ are picked up without editing this test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def test_there_are_benchmarks() -> None:
    assert len(BENCHMARKS) >= 6, BENCHMARKS


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda p: p.stem)
def test_quick_mode_runs_and_ends_with_its_json_figures(bench: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(bench.relative_to(ROOT)), "--quick"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,  # a quick run takes seconds to 3 minutes on two busy cores (model loads)
        check=False,
    )
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, f"{bench.name} --quick exited {result.returncode}:\n{tail}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"{bench.name} --quick printed nothing:\n{tail}"
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        pytest.fail(f"{bench.name} --quick: last line is not JSON ({exc}): {lines[-1]!r}")
    assert isinstance(figures, dict), f"{bench.name}: last line is not an object: {lines[-1]!r}"
    numbers = [v for v in figures.values() if isinstance(v, int | float)]
    assert numbers, f"{bench.name}: no figures in {figures}"
