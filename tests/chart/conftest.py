"""Fixtures for the chart tests: one render per environment and release per session (render.py).

`docs` is the whole release (subcharts included) of every environment under every release name:
a test that takes it runs for each pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.render import ENVS, RELEASES, Release, render_env
from tests.chart.render import cluster_docs as _cluster_docs


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
def cluster_docs(env: str, release: Release) -> list[dict[str, Any]]:
    """`docs`, and beside the release what the cluster runs where the environment uses the
    cluster's own operators (values/shared-cluster.yaml): what wiring and policies meet."""
    return _cluster_docs(env, release)


@pytest.fixture(scope="session")
def default_docs() -> list[dict[str, Any]]:
    return render_env("default")


@pytest.fixture(scope="session")
def prod_docs() -> list[dict[str, Any]]:
    return render_env("prod")


# checkov's findings per subchart on values/prod.yaml, printed at the end of the run.
CHECKOV_SUMMARY = pytest.StashKey[tuple[int, dict[str, int]]]()


@pytest.fixture
def report_checkov(request: pytest.FixtureRequest) -> Callable[[int, dict[str, int]], None]:
    """Records (total, count per subchart) for the summary line below."""

    def record(total: int, per_chart: dict[str, int]) -> None:
        request.config.stash[CHECKOV_SUMMARY] = (total, per_chart)

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary = config.stash.get(CHECKOV_SUMMARY, None)
    if summary is not None:
        total, per_chart = summary
        counts = ", ".join(f"{chart} {n}" for chart, n in per_chart.items())
        terminalreporter.write_line(f"checkov on prod, subcharts: {total} failed ({counts})")
