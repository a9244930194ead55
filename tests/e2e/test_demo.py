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


def _survivors(pids: set[int], within: float) -> list[int]:
    """Those of `pids` still alive after `within` seconds (polled: an exited process can take a
    moment to be reaped, so a check at one instant would be flaky and a sleep would be slow)."""
    deadline = time.monotonic() + within
    while (alive := sorted(p for p in pids if pid_alive(p))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


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


def test_demo_runs_both_loops_promotes_then_keeps_the_champion(tmp_path):
    # Round 1 promotes the fine-tuned challenger; round 2, gated by a huge margin, must not.
    code, out, seen = _run_to_end(tmp_path / "demo", "--challenge-again", "1000")
    assert code == 0, out
    order = [
        "upload + ingest documents",
        "round 1: questions, rated down",
        "round 1: retrain alert fires",
        "round 1: alertmanager -> gateway",
        "round 1: prepare, finetune, evaluate, gate",
        "round 1: promotion gate",
        "chatbot serves the champion",
        "round 2: questions, rated down",
        "round 2: retrain alert fires",
        "round 2: promotion gate",
    ]
    done = [line for line in out.splitlines() if " ok " in line]
    positions = [next(i for i, line in enumerate(done) if f"] {stage} " in line) for stage in order]
    assert positions == sorted(positions), out
    assert "FAILED" not in out
    gate_lines = [line for line in done if "promotion gate" in line]
    assert "promoted: champion tiny-base -> 1" in gate_lines[0], out
    assert "rejected: champion 1 -> 1" in gate_lines[1], out  # the champion stayed
    served = [line for line in done if "chatbot serves the champion" in line]
    assert len(served) == 2 and all("model version 1" in line for line in served)
    assert "chatbot hot-swapped to model version 1 (swaps 1)" in served[0], out  # no restart
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "timeline plot" in report
    assert "<b>promoted</b>" in report and "<b>rejected</b>" in report
    assert "Why: " in report and "margin 1000" in report
    assert seen and not _survivors(seen, within=1), "processes left behind"


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
    assert seen and not _survivors(seen, within=0.5), json.dumps(sorted(seen))
