"""Errors the CLI turns into one clear line and an exit code.

Anything that is not a BigberthaError is a bug and keeps its traceback.
"""

from __future__ import annotations


class BigberthaError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 1


class ConfigError(BigberthaError):
    """Invalid settings: one line per bad field."""

    exit_code = 2


class InputError(BigberthaError):
    """Some inputs were rejected; the rest were processed."""

    exit_code = 3


class ServiceUnavailable(BigberthaError):
    """A required service (storage, Milvus, MLflow, Redis) stayed unreachable after retries."""

    exit_code = 1
