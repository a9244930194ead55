"""ci/bounded.py: .ci/run's check that `make demo` ends in time, leaves nothing, reports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BOUNDED = Path(__file__).resolve().parents[1] / "ci" / "bounded.py"
# A daemon: its own session, its parent gone at once (what a process-group check misses).
DAEMON = (
    "import subprocess, sys; "
    "subprocess.Popen(['sleep', '300'], start_new_session=True); "
    "open(sys.argv[1], 'w').write('report')"
)


def _bounded(tmp_path: Path, *args: str, timeout: str = "60") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BOUNDED), "--timeout", timeout, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _sleepers() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == b"sleep\x00300\x00":
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def test_a_clean_run_that_writes_its_report_passes(tmp_path):
    result = _bounded(tmp_path, "--expect", "out.txt", "--", "sh", "-c", "echo hi > out.txt")
    assert result.returncode == 0, result.stdout
    assert "exited 0 after" in result.stdout


def test_a_process_left_behind_fails_and_is_killed(tmp_path):
    before = _sleepers()
    result = _bounded(tmp_path, "--expect", "r", "--", sys.executable, "-c", DAEMON, "r")
    assert result.returncode == 1, result.stdout
    assert "1 process(es) left behind, now killed:" in result.stdout
    assert "sleep 300" in result.stdout
    time.sleep(0.5)
    assert _sleepers() == before  # killed, not left to the machine


def test_no_report_or_an_old_one_fails(tmp_path):
    result = _bounded(tmp_path, "--expect", "report.html", "--", "true")
    assert result.returncode == 1
    assert "report.html was not written by this run" in result.stdout
    (tmp_path / "report.html").write_text("last run's")
    os.utime(tmp_path / "report.html", (time.time() - 60, time.time() - 60))
    assert _bounded(tmp_path, "--expect", "report.html", "--", "true").returncode == 1
    # The same old report, rewritten by the run: written by this run.
    rewrite = ("sh", "-c", "echo new > report.html")
    assert _bounded(tmp_path, "--expect", "report.html", "--", *rewrite).returncode == 0


def test_a_failing_command_keeps_its_exit_code(tmp_path):
    assert _bounded(tmp_path, "--", "sh", "-c", "exit 4").returncode == 4


def test_a_run_past_the_limit_is_interrupted(tmp_path):
    started = time.monotonic()
    result = _bounded(tmp_path, "--", "sleep", "60", timeout="1")
    assert result.returncode == 124
    assert "ran past 1 s: interrupting it" in result.stdout
    assert time.monotonic() - started < 30
