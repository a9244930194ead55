"""The whole loop on one machine: `bigbertha demo`, end to end, with real processes.

The scenario runs with a tiny model built in code instead of SmolLM2 so that it fits the CI
budget on two cores; every process, route, Sensor, workflow step and registry move is real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.services import pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")


MARK = "BIGBERTHA_E2E_RUN"


def _marked(marker: str) -> set[int]:
    """Live processes whose environment carries this run's marker: every process the demo
    started, whatever became of its parent or session (services run in their own)."""
    needle = f"{MARK}={marker}\0".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return {pid for pid in found if pid_alive(pid)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _survivors(marker: str, within: float) -> set[int]:
    """This run's processes still alive after `within` seconds (polled: an exited process can
    take a moment to be reaped, so a check at one instant would be flaky and a sleep slow)."""
    deadline = time.monotonic() + within
    while (alive := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _demo(cwd: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`bigbertha demo --tiny` from `cwd` with the default (relative) state directory, as
    `make demo` runs it from the repository root; and the marker its processes carry.

    It starts with SIGINT ignored, as a background job of a non-interactive shell (a CI
    script) does: the tests' Ctrl-C must stop it all the same."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", MARK: marker}
    proc = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$0" "$@"', BIGBERTHA, "demo", "--tiny", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    return proc, marker


def _run_to_end(
    cwd: Path, *args: str, timeout: float = 900, at_keep: Any = None
) -> tuple[int, str, set[int], set[int]]:
    """Run the demo to its end; with --keep, call `at_keep(output)` once the stack stays up,
    then stop it with Ctrl-C as a user does. Returns the exit code, the output, the processes
    it ran and those still alive a second after it exited."""
    proc, marker = _demo(cwd, *args)
    seen: set[int] = set()
    lines: list[str] = []
    assert proc.stdout is not None
    # The budget holds also while the demo prints nothing: stop it as `timeout` would (SIGTERM,
    # which stops its services), then kill what is left; the output then ends.
    overrun = threading.Event()

    def stop() -> None:
        overrun.set()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, stop)
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            seen |= _marked(marker)
            if line.startswith("stack running") and not overrun.is_set():
                try:
                    at_keep("".join(lines))
                finally:
                    proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    finally:
        watchdog.cancel()
    if overrun.is_set():
        pytest.fail("demo ran past its time budget:\n" + "".join(lines[-40:]))
    return code, "".join(lines), seen, _survivors(marker, within=1)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)


def test_demo_promotes_keeps_the_champion_then_runs_again_and_retires_a_challenger(tmp_path):
    # Round 1's challenger passes the gate and the live canary (its raters prefer it); round 2,
    # gated by a huge margin, must not pass. One scenario covers every ending: CI runs it once.
    urls: dict[str, str] = {}

    def services_answer(out: str) -> None:
        # --keep: the stack stays up and every URL printed answers.
        for line in out.splitlines():
            if line.startswith("  ") and "http://" in line:
                name, url = line.split()
                urls[name] = url
        assert set(urls) == {
            "chatbot",
            "prometheus",
            "alertmanager",
            "mlflow",
            "exporter",
            "gateway",
        }
        probes = {
            "chatbot": "/api/status",
            "prometheus": "/-/ready",
            "alertmanager": "/-/ready",
            "mlflow": "/health",
            "exporter": "",
            "gateway": "/healthz",
        }
        for name, path in probes.items():
            assert _get(urls[name] + path) == 200, name

    code, out, seen, left = _run_to_end(
        tmp_path, "--challenge-again", "1000", "--keep", at_keep=services_answer
    )
    assert code == 0, out  # Ctrl-C ends --keep with the scenario's exit code
    assert urls, out
    order = [
        "start services",
        "upload + ingest documents",
        "start chatbot",
        "round 1: questions, rated down",
        "round 1: retrain alert fires",
        "round 1: alertmanager -> gateway",
        "round 1: prepare, finetune, evaluate, gate",
        "round 1: promotion gate",
        "round 1: chatbot serves the canary",
        "round 1: raters prefer the challenger",
        "round 1: canary decision",
        "chatbot serves the champion",
        "round 2: questions, rated down",
        "round 2: retrain alert fires",
        "round 2: promotion gate",
    ]
    done = [line for line in out.splitlines() if " ok " in line]
    positions = [next(i for i, line in enumerate(done) if f"] {stage} " in line) for stage in order]
    assert positions == sorted(positions), out
    assert "FAILED" not in out
    # Both ingestion paths ran: the backfill of the existing bucket and one upload's event.
    (ingested,) = [line for line in done if "upload + ingest documents" in line]
    assert "3 documents backfilled in 1 batch(es), 1 ingested on upload" in ingested, out
    gate_lines = [line for line in done if "promotion gate" in line]
    assert "challenger: version 1 goes on a live canary" in gate_lines[0], out
    assert "rejected: champion 1 -> 1" in gate_lines[1], out  # the champion stayed
    (canary,) = [line for line in done if "canary decision" in line]
    assert "promoted after" in canary and "the chatbot ended the canary" in canary, out
    # Every conversation is another rater (its own loopback address), counted as a person.
    people = re.search(r"; (\d+) people voted on the challenger;", canary)
    assert people and int(people[1]) >= 2, canary
    served = [line for line in done if "chatbot serves the champion" in line]
    assert len(served) == 2 and all("model version 1" in line for line in served)
    assert "chatbot hot-swapped to model version 1 (swaps 1)" in served[0], out  # no restart
    # The terminal ends with the report's path and one line per round (then --keep's URLs).
    state = tmp_path / ".bigbertha" / "demo"
    lines = out.splitlines()
    end = lines.index(f"report: {state / 'report.html'}")
    assert lines[end + 1].startswith("round 1 (quality): promoted version 1 over tiny-base: ")
    assert "; live canary: down-vote ratio challenger" in lines[end + 1], out
    assert lines[end + 2].startswith("round 2 (quality): kept champion 1 (challenger version 2)")
    with_urls = [i for i, line in enumerate(lines) if "http://" in line]
    assert len(with_urls) == 6 and min(with_urls) > end + 2, out  # printed for --keep only
    report = (state / "report.html").read_text()
    assert "timeline plot" in report and "canary plot" in report
    assert "<b>challenger</b>" in report and "<b>rejected</b>" in report  # the gate's
    assert "<b>promoted</b>" in report and "Raters preferred the challenger" in report
    assert "Why: " in report and "margin 1000" in report
    # The same questions answered by the old and the new champion, side by side.
    assert "old champion (version tiny-base)" in report and "new champion (version 1)" in report
    assert report.count("rated down") >= 4 and "rollback.md" in report
    assert len(seen) > 8 and not left, f"processes left behind: {left}"

    # A second run in the same directory starts from the state the first one left (fresh
    # services, a fresh registry), and plays the other ending: the same gate passes the
    # challenger, but the canary's raters prefer the champion, which stays.
    def service_dirs() -> set[str]:  # <name>-<port>: one per service a run started
        return {p.name for p in (state / "run").iterdir() if re.fullmatch(r"[a-z]+-\d+", p.name)}

    first_services = service_dirs()
    code, out, seen, left = _run_to_end(tmp_path, "--raters", "champion")
    assert code == 4, out  # the champion was kept
    assert "http://" not in out  # no --keep: no URLs that would be dead at once
    assert first_services and service_dirs() and not first_services & service_dirs()
    done = [line for line in out.splitlines() if " ok " in line]
    (canary,) = [line for line in done if "canary decision" in line]
    assert "retired after" in canary and "not better by 0.25" in canary, out
    assert not [line for line in done if "chatbot serves the champion" in line]
    last = out.splitlines()[-1]
    assert last.startswith("round 1 (quality): kept champion tiny-base (challenger version 1 "), out
    assert "retired by the live canary: down-vote ratio challenger" in last, out
    report = (state / "report.html").read_text()  # this run's, not the first one's
    assert "<b>retired</b>" in report and "canary plot" in report
    assert "<b>promoted</b>" not in report and "margin 1000" not in report
    assert len(seen) > 8 and not left, f"processes left behind: {left}"


def test_ctrl_c_stops_everything_within_seconds(tmp_path):
    # Interrupted while ingestion workflows run and MLflow and the chatbot start: the steps
    # the gateway runs and a service being launched must not outlive the demo either.
    proc, marker = _demo(tmp_path)
    seen: set[int] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        seen |= _marked(marker)
        if "upload + ingest documents" in line:
            break
    else:
        pytest.fail("the demo never got its stack up")
    # Wait until the gateway runs an ingestion step (a process of its own).
    deadline = time.monotonic() + 60
    while not any(b"ingest" in _cmdline(pid) for pid in seen):
        assert time.monotonic() < deadline, "no ingestion step started"
        time.sleep(0.1)
        seen |= _marked(marker)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    rest = proc.stdout.read()
    code = proc.wait(30)
    stopped_in = time.monotonic() - started
    assert code == 130, rest
    assert stopped_in < 20
    assert "stopping every process" in rest
    assert (tmp_path / ".bigbertha" / "demo" / "report.html").is_file()  # where it stopped
    left = _survivors(marker, within=1)
    assert len(seen) > 8 and not left, json.dumps(sorted(left))


def test_a_second_demo_in_the_same_directory_is_refused(tmp_path):
    from bigbertha.local.platform import VALUES, LocalPlatform

    first = LocalPlatform(tmp_path / "demo", None, VALUES)
    first.claim_workdir()
    try:
        code, out, _, _ = _run_to_end(tmp_path, "--workdir", str(tmp_path / "demo"), timeout=120)
    finally:
        first.stop()
    assert code == 75, out
    assert f"another bigbertha demo (pid {os.getpid()}) is running in {tmp_path / 'demo'}" in out
    assert not (tmp_path / "demo" / "report.html").exists()  # the running one's is not touched
