"""Finding the chart the demo renders: a checkout, the current directory or $BIGBERTHA_CHART."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigbertha.core.errors import ConfigError
from bigbertha.local import chart

ROOT = Path(__file__).resolve().parents[2]


def test_the_current_directory_s_chart_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(chart.CHART_ENV, raising=False)
    monkeypatch.chdir(ROOT / "docs")  # not a chart: falls back to the checkout
    assert chart.root() == ROOT
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: bigbertha\nversion: 0.0.1\n")
    monkeypatch.chdir(tmp_path)
    assert chart.root() == tmp_path.resolve()


def test_an_installed_package_without_a_chart_says_where_to_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(chart.CHART_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(chart, "ROOT", tmp_path / "site-packages")  # no chart beside it
    with pytest.raises(ConfigError, match="run this from a clone .* or set BIGBERTHA_CHART"):
        chart.root()
    monkeypatch.setenv(chart.CHART_ENV, str(ROOT))
    assert chart.root() == ROOT
    monkeypatch.setenv(chart.CHART_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=f"BIGBERTHA_CHART={tmp_path}: no BigBertha Chart.yaml"):
        chart.root()
