"""The whole loop on one machine: `bigbertha demo`, end to end, with real processes.

The scenario runs with a tiny model built in code instead of SmolLM2 so that it fits the CI
budget on two cores; every process, route, Sensor, workflow step and registry move is real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry reaches `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _demo(workdir: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [BIGBERTHA, "demo", "--workdir", str(workdir), "--tiny", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _run_to_end(workdir: Path, *args: str, timeout: float = 900) -> tuple[int, str, set[int]]:
    proc = _demo(workdir, *args)
    seen: set[int] = set()
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        seen |= _descendants(proc.pid)
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("demo ran past its time budget:\n" + "".join(lines[-40:]))
    code = proc.wait(60)
    return code, "".join(lines), seen


def test_demo_runs_both_loops_and_promotes(tmp_path):
    code, out, seen = _run_to_end(tmp_path / "demo")
    assert code == 0, out
    order = [
        "upload + ingest documents",
        "questions, rated down",
        "retrain alert fires",
        "alertmanager -> gateway",
        "prepare, finetune, evaluate, gate",
        "promotion gate",
        "chatbot serves the champion",
    ]
    positions = [out.find(f"{stage} ") for stage in order]
    assert -1 not in positions and positions == sorted(positions), out
    assert "FAILED" not in out
    assert "promoted" in out
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "timeline plot" in report and "promoted" in report
    time.sleep(1)
    assert seen and not [p for p in seen if pid_alive(p)], "processes left behind"


def test_challenger_that_loses_keeps_the_champion(tmp_path):
    code, out, seen = _run_to_end(tmp_path / "demo", "--margin", "1000")
    assert code == 4, out
    assert "champion kept" in out
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "rejected" in report
    time.sleep(1)
    assert not [p for p in seen if pid_alive(p)]


def test_ctrl_c_stops_everything_within_seconds(tmp_path):
    proc = _demo(tmp_path / "demo")
    seen: set[int] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        seen |= _descendants(proc.pid)
        if "start prometheus" in line and " ok " in line:
            break
    else:
        pytest.fail("the demo never got its stack up")
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    rest = proc.stdout.read()
    code = proc.wait(30)
    stopped_in = time.monotonic() - started
    assert code == 130, rest
    assert stopped_in < 15
    assert "stopping every process" in rest
    time.sleep(0.5)
    assert seen and not [p for p in seen if pid_alive(p)], json.dumps(sorted(seen))
