"""SIGTERM and SIGINT as an error, so a job's cleanup runs before it exits.

Python's default SIGTERM handling ends the process on the spot: no ``finally`` runs, so a job
Kubernetes stops (deadline, deletion, drain) writes no report, leaves its MLflow run RUNNING
and logs nothing. Inside `interruptible()` either signal raises `Interrupted` where the job is:
its ``finally`` blocks and context managers run (reports written, runs ended FAILED, locks
released), then the CLI boundary prints the one-line error and exits 128 + the signal number.

A library may wrap the exception in its own (pymilvus turns it into a MilvusException): any
exception leaving the block after a signal becomes `Interrupted`, and loops call `check()`
between items in case one was swallowed. Once a signal arrived, later ones are ignored so the
cleanup is not cut in half; SIGKILL remains the way to stop a process at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from bigbertha.core.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the first signal of this process's current job
_depth = 0


def _handler(signum: int, frame: FrameType | None) -> None:
    if _received:  # the first one is being handled: let its cleanup finish
        return
    _received.append(signum)
    raise Interrupted(signum)


def check() -> None:
    """Raise `Interrupted` if a signal arrived (and the exception it raised was swallowed)."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Raise `Interrupted` on SIGTERM or SIGINT inside the block (main thread only: Python
    delivers signals there; elsewhere this does nothing). Blocks may nest."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _received.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    _depth += 1
    try:
        yield
    except Interrupted:
        raise
    except Exception as exc:
        if _received:
            raise Interrupted(_received[0]) from exc
        raise
    finally:
        _depth -= 1
        for sig, old in previous.items():
            signal.signal(sig, old)
