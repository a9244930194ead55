"""`bigbertha demo`'s exit codes are the jobs' (core/errors.py): SIGTERM is 143, as everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIGBERTHA = str(Path(sys.executable).with_name("bigbertha"))


@pytest.mark.slow
def test_sigterm_while_services_start_exits_143(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [BIGBERTHA, "demo", "--tiny", "--workdir", str(tmp_path / "demo")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "start services" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(60) == 143, rest  # not 130: that is Ctrl-C's
        assert "stopping every process" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
