"""Fixtures for the chart tests: one render per environment per session (see render.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import ENVS, render_env


@pytest.fixture(scope="session", params=ENVS)
def env(request: pytest.FixtureRequest) -> str:
    """Each environment: the chart defaults and every values/<env>.yaml."""
    return str(request.param)


@pytest.fixture(scope="session")
def docs(env: str) -> list[dict[str, Any]]:
    return render_env(env)


@pytest.fixture(scope="session")
def default_docs() -> list[dict[str, Any]]:
    return render_env("default")


@pytest.fixture(scope="session")
def prod_docs() -> list[dict[str, Any]]:
    return render_env("prod")
