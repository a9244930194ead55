"""The test harness's view of bigbertha.local.stack: a missing binary skips locally, fails in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bigbertha.core.errors import ServiceUnavailable
from bigbertha.local.stack import Service, find_binary, free_port, pid_alive
from bigbertha.local.stack import ServiceManager as _StackManager

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

__all__ = ["IN_CI", "Service", "ServiceManager", "free_port", "pid_alive", "require_binary"]


def require_binary(name: str, *alternatives: str) -> str:
    """Path of a binary; a skip locally but a failure in CI when it is missing."""
    try:
        return find_binary(name, *alternatives)
    except ServiceUnavailable as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


class ServiceManager(_StackManager):
    """Starts real services for tests; missing binaries follow the CI rule above."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, which=require_binary)
