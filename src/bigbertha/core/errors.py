"""Errors and the exit codes they end a process with: one contract for every subcommand.

| code | class                | meaning                                               | retried |
|------|----------------------|-------------------------------------------------------|---------|
| 0    |                      | done                                                  |         |
| 2    | `ConfigError`        | settings, flags or references that cannot work        | no      |
| 3    | `InputError`         | bad input rejected (the rest was processed)           | no      |
| 4    | (`bigbertha demo`)   | the demo ran, and the gate or canary kept the champion| no      |
| 69   | `ServiceUnavailable` | a service stayed unreachable or timed out: transient  | yes     |
| 70   | (anything else)      | an unexpected error: a bug, printed with its traceback| no      |
| 75   | `Busy`               | another run holds the lock; nothing was done          | no      |
| 130  | `Interrupted`        | stopped by SIGINT (Ctrl-C); what was done is reported | no      |
| 143  | `Interrupted`        | stopped by SIGTERM (Kubernetes stops a pod with it)   | no      |

The CLI has one error boundary (`cli.BigberthaGroup`): a `BigberthaError` becomes its message,
one line per problem, and its class's code; any other exception is a bug (code 70). The
WorkflowTemplates retry exit code 69 only (and pod errors), so a configuration mistake or a
bug fails at once instead of being retried with backoff. docs/runbooks.md lists the codes.
An interrupted job exits 128 + the signal's number, as a shell reports a process the signal
killed, but only after its cleanup ran (`bigbertha.core.interrupts`): reports written, MLflow
runs ended, locks released. A pod stopped by Argo's deadline or deleted is not retried on its
exit code; an evicted pod is retried as a pod error.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    CONFIG = 2
    INPUT = 3
    KEPT = 4  # `bigbertha demo` only: it ran, and the gate or the live canary kept the champion
    UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the only code the workflows retry
    BUG = 70  # sysexits EX_SOFTWARE
    BUSY = 75  # sysexits EX_TEMPFAIL
    INTERRUPTED = 130  # 128 + SIGINT
    TERMINATED = 143  # 128 + SIGTERM


class BigberthaError(Exception):
    """Base class: the message says what went wrong and what to do.

    Never raised itself: every error is one of the classes below (or a subclass of one), so
    its exit code says whether trying again can help.
    """

    exit_code: ExitCode

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "exit_code", None), ExitCode):
            raise TypeError(f"{cls.__name__}: an error must declare its ExitCode class")


class ConfigError(BigberthaError):
    """Invalid settings, flags or references: one line per bad field."""

    exit_code = ExitCode.CONFIG


class InputError(BigberthaError):
    """Some inputs were rejected; the rest were processed."""

    exit_code = ExitCode.INPUT


class ServiceUnavailable(BigberthaError):
    """A required service (storage, Milvus, MLflow, Redis, an LLM endpoint) stayed unreachable
    or timed out after retries: transient, so the workflows retry it."""

    exit_code = ExitCode.UNAVAILABLE


class Busy(BigberthaError):
    """Another run holds the lock this one needs; nothing was done."""

    exit_code = ExitCode.BUSY


class Interrupted(BigberthaError):
    """A signal stopped the job after its cleanup ran; exits 128 + the signal number."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}: stopped before the end; what was done is kept")
        if signum == signal.SIGTERM:
            self.exit_code = ExitCode.TERMINATED
