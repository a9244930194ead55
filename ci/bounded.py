#!/usr/bin/env python3
"""Run a command with a time limit and fail if it leaves a process behind or writes no file.

    python3 ci/bounded.py --timeout 900 --expect .bigbertha/demo/report.html -- make demo

.ci/run runs `make demo` through this. A service the command starts in its own session
(setsid, as the demo's supervisor does) escapes a process-group check, so this process becomes
a child subreaper (prctl PR_SET_CHILD_SUBREAPER): every orphan of the command's tree is
re-parented here instead of to init, and whatever of that tree is alive once the command has
exited is a leak. It is reported, killed, and fails the run. Standard library only.

Exit status: the command's own when it fails; 124 when it ran past --timeout; 1 when it
succeeded but left a process behind or did not write an --expect file; else 0.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat(pid: str) -> tuple[int, str] | None:
    """(parent pid, state) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), fields[0]


def descendants(root: int) -> set[int]:
    """Live (not zombie) processes whose ancestry reaches `root`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None and stat[1] != "Z":
            parents[int(entry)] = stat[0]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def reap() -> None:
    """Collect the exit status of re-parented orphans that have exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return f"{pid} {' '.join(a.decode(errors='replace') for a in argv if a)}"
    except OSError:
        return str(pid)


def leftovers(grace: float) -> set[int]:
    """What of the command's tree is still alive after `grace` seconds to exit."""
    deadline = time.monotonic() + grace
    while True:
        reap()
        alive = descendants(os.getpid())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    leftovers(5)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def run(argv: Sequence[str], timeout: float, expect: Sequence[Path], grace: float) -> int:
    become_subreaper()
    started = time.time()
    # "Written by this run": absent before, or its modification time changed. (Comparing it
    # with `started` fails on a file written at once: the kernel stamps files from a coarse
    # clock that can be a few milliseconds behind time.time().)
    before = {path: _mtime(path) for path in expect}
    # Its own process group, so a timeout can interrupt the command as Ctrl-C would.
    proc = subprocess.Popen(list(argv), start_new_session=True)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"bounded: {' '.join(argv)} ran past {timeout:.0f} s: interrupting it", flush=True)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        kill_all(descendants(os.getpid()))
        return 124
    took = time.time() - started
    print(f"bounded: {' '.join(argv)} exited {code} after {took:.0f} s", flush=True)
    failed = False
    left = leftovers(grace)
    if left:
        print(f"bounded: {len(left)} process(es) left behind, now killed:", flush=True)
        for pid in sorted(left):
            print(f"  {describe(pid)}", flush=True)
        kill_all(left)
        failed = True
    for path in expect:
        if not path.is_file() or _mtime(path) == before[path]:
            print(f"bounded: {path} was not written by this run", flush=True)
            failed = True
    if code != 0:
        return code
    return 1 if failed else 0


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ci/bounded.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--timeout", type=float, required=True, help="seconds")
    parser.add_argument(
        "--expect", type=Path, action="append", default=[], help="a file the run must write"
    )
    parser.add_argument(
        "--grace", type=float, default=3.0, help="seconds for the tree to exit after it"
    )
    parser.add_argument("command", nargs="+")
    ns = parser.parse_args(args)
    return run(ns.command, ns.timeout, ns.expect, ns.grace)


if __name__ == "__main__":
    sys.exit(main())
