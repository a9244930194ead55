"""Fixtures for the chart tests: one render per environment and release per session (render.py).

`docs` is the whole release (subcharts included) of every environment under every release name:
a test that takes it runs for each pair.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import ENVS, RELEASES, Release, render_env


@pytest.fixture(scope="session", params=ENVS)
def env(request: pytest.FixtureRequest) -> str:
    """Each environment: the chart defaults and the values/ files as users layer them."""
    return str(request.param)


@pytest.fixture(scope="session", params=RELEASES, ids=str)
def release(request: pytest.FixtureRequest) -> Release:
    """Each release name (and its namespace)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def docs(env: str, release: Release) -> list[dict[str, Any]]:
    return render_env(env, release)


@pytest.fixture(scope="session")
def default_docs() -> list[dict[str, Any]]:
    return render_env("default")


@pytest.fixture(scope="session")
def prod_docs() -> list[dict[str, Any]]:
    return render_env("prod")

