"""The test harness's view of bigbertha.local.stack, and its one rule for what is missing: a
prerequisite (binary, tool, ../shared) absent skips locally and fails in CI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from bigbertha.core.errors import ServiceUnavailable
from bigbertha.local.stack import Service, find_binary, free_port, http_ok, pid_alive
from bigbertha.local.stack import ServiceManager as _StackManager

__all__ = [
    "IN_CI",
    "Service",
    "ServiceManager",
    "free_port",
    "in_ci",
    "missing",
    "pid_alive",
    "require_binary",
]


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """The one definition of "in CI" (the only read of CI in the tree): CI set to a true word,
    as .ci/run and GitHub Actions set it. `CI=false`, `CI=0` and an empty CI are not CI."""
    return environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


IN_CI = in_ci()


def missing(message: str) -> NoReturn:
    """A prerequisite is absent: skip locally, fail in CI (where a skip would hide a failure)."""
    if IN_CI:
        pytest.fail(f"{message} (CI must have it)")
    pytest.skip(message)


def require_binary(name: str, *alternatives: str) -> str:
    """Path of a binary; a skip locally but a failure in CI when it is missing."""
    try:
        return find_binary(name, *alternatives)
    except ServiceUnavailable as exc:
        missing(str(exc))


class ServiceManager(_StackManager):
    """Starts real services for tests; missing binaries follow the CI rule above."""

    def __init__(self, base: Path) -> None:
        super().__init__(base, which=require_binary)

    def oidc(self) -> Service:
        """A real OpenID provider (oidc-provider-mock): discovery, keys, the authorization-code
        flow, signed ID tokens. Anyone may sign in as any subject, with any client id."""
        binary = self.which("oidc-provider-mock")
        port = free_port()
        issuer = f"http://127.0.0.1:{port}"
        service = self._launch(
            "oidc",
            [binary, "--host", "127.0.0.1", "--port", str(port)],
            port,
            probe=lambda: http_ok(f"{issuer}/.well-known/openid-configuration"),
            timeout=30,
            wait=True,
        )
        service.extra["issuer"] = issuer
        return service
