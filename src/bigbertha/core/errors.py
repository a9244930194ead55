"""Errors and the exit codes they end a process with: one contract for every subcommand.

| code | class                | meaning                                               | retried |
|------|----------------------|-------------------------------------------------------|---------|
| 0    |                      | done                                                  |         |
| 2    | `ConfigError`        | settings, flags or references that cannot work        | no      |
| 3    | `InputError`         | bad input rejected (the rest was processed)           | no      |
| 69   | `ServiceUnavailable` | a service stayed unreachable or timed out: transient  | yes     |
| 70   | (anything else)      | an unexpected error: a bug, printed with its traceback| no      |
| 75   | `Busy`               | another run holds the lock; nothing was done          | no      |

The CLI has one error boundary (`cli.BigberthaGroup`): a `BigberthaError` becomes its message,
one line per problem, and its class's code; any other exception is a bug (code 70). The
WorkflowTemplates retry exit code 69 only (and pod errors), so a configuration mistake or a
bug fails at once instead of being retried with backoff. docs/runbooks.md lists the codes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    CONFIG = 2
    INPUT = 3
    UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the only code the workflows retry
    BUG = 70  # sysexits EX_SOFTWARE
    BUSY = 75  # sysexits EX_TEMPFAIL


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
