"""What the browser tests share: Chromium's path and flags, and the server processes they
drive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigbertha.local.stack import http_ok
from tests.services import pid_alive

CHROMIUM = "/usr/bin/chromium"
BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Proc:
    """A `bigbertha` server process of the test, its output in a log, stopped by group."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)
        assert not pid_alive(self.process.pid)


def wait_http(url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.process.poll() is None, f"exited:\n{proc.tail()}"
        try:
            if http_ok(url):
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout}s:\n{proc.tail()}")
