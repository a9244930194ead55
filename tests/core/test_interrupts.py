"""SIGTERM/SIGINT become `Interrupted` after the job's cleanup, even through a library."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from bigbertha.core import interrupts
from bigbertha.core.errors import ExitCode, Interrupted


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, ExitCode.TERMINATED), (signal.SIGINT, ExitCode.INTERRUPTED)],
)
def test_a_signal_runs_the_cleanup_then_exits_with_128_plus_its_number(
    sig: signal.Signals, code: ExitCode
) -> None:
    cleaned: list[str] = []
    with pytest.raises(Interrupted) as err, interrupts.interruptible():
        try:
            os.kill(os.getpid(), sig)
            pytest.fail("the signal did not interrupt the block")
        finally:
            os.kill(os.getpid(), sig)  # a second one does not cut the cleanup short
            cleaned.append("report written")
    assert cleaned == ["report written"]
    assert err.value.exit_code == code == 128 + sig
    assert str(err.value).startswith(f"interrupted by {sig.name}")
    assert signal.getsignal(sig) is not interrupts._handler  # the old handler is back


def test_a_library_that_wraps_or_swallows_the_interruption_cannot_hide_it() -> None:
    class LibraryError(Exception):
        pass

    with pytest.raises(Interrupted) as err, interrupts.interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Interrupted as exc:  # as pymilvus does with whatever it catches
            raise LibraryError("rpc failed") from exc
    assert isinstance(err.value.__cause__, LibraryError)

    with pytest.raises(Interrupted), interrupts.interruptible():
        with contextlib.suppress(Interrupted):  # swallowed: the loop's next check() stops it
            os.kill(os.getpid(), signal.SIGTERM)
        interrupts.check()


def test_nested_blocks_and_a_fresh_job_start_clean() -> None:
    with interrupts.interruptible(), interrupts.interruptible():
        interrupts.check()  # nothing received: no error
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
