"""`make deps` (ci/deps.sh): charts/ gets exactly the archives Chart.yaml pins, from the chart
repositories through helm or from a mirror directory, and a wrong archive stops it loudly."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.chart.render import ROOT

SCRIPT = ROOT / "ci" / "deps.sh"
PINS = {
    d["name"]: d["version"]
    for d in yaml.safe_load((ROOT / "Chart.yaml").read_text())["dependencies"]
}


def _archive(path: Path, name: str, version: str) -> None:
    """A packaged chart as `helm package` writes it: <name>/Chart.yaml inside a .tgz."""
    meta = f"apiVersion: v2\nname: {name}\nversion: {version}\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{name}/Chart.yaml")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    """A chart directory with our Chart.yaml and an empty charts/."""
    chart = tmp_path / "chart"
    (chart / "charts").mkdir(parents=True)
    shutil.copy(ROOT / "Chart.yaml", chart / "Chart.yaml")
    return chart


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, version in PINS.items():
        _archive(mirror / f"{name}-{version}.tgz", name, version)
    return mirror


def _run(chart: Path, path: str = "/usr/bin:/bin", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": path, "HOME": str(chart.parent), "BIGBERTHA_SHARED": "/nonexistent", **env}
    return subprocess.run(
        [str(SCRIPT), str(chart)], capture_output=True, text=True, env=environ, check=False
    )


def _filled(chart: Path) -> set[str]:
    return {p.name for p in (chart / "charts").glob("*.tgz")}


def test_the_mirror_fills_charts_with_the_pins_and_drops_stale_archives(chart, mirror):
    _archive(chart / "charts" / "minio-5.3.0.tgz", "minio", "5.3.0")  # a pin left behind
    result = _run(chart, BIGBERTHA_CHART_MIRROR=str(mirror))
    assert result.returncode == 0, result.stderr
    assert _filled(chart) == {f"{n}-{v}.tgz" for n, v in PINS.items()}
    assert "removing" in result.stdout and "minio-5.3.0.tgz" in result.stdout
    again = _run(chart, BIGBERTHA_CHART_MIRROR=str(mirror))  # idempotent
    assert again.returncode == 0 and _filled(chart) == {f"{n}-{v}.tgz" for n, v in PINS.items()}


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        (("minio", "5.3.0"), "holds minio 5.3.0, but Chart.yaml pins minio 5.4.0"),
        (("mlflow", "5.4.0"), "holds no minio/Chart.yaml"),
    ],
)
def test_an_archive_that_is_not_the_pin_fails_naming_both(chart, mirror, inner, message):
    _archive(mirror / "minio-5.4.0.tgz", *inner)
    result = _run(chart, BIGBERTHA_CHART_MIRROR=str(mirror))
    assert result.returncode != 0
    assert message in result.stderr


def test_a_mirror_without_a_pin_fails_naming_it(chart, mirror):
    (mirror / "milvus-5.0.19.tgz").unlink()
    result = _run(chart, BIGBERTHA_CHART_MIRROR=str(mirror))
    assert result.returncode != 0 and "milvus-5.0.19.tgz is missing" in result.stderr


def _fake_helm(bin_dir: Path, mirror: Path, works: bool) -> None:
    """A helm that records its calls; `dependency build` copies from `mirror` or fails."""
    bin_dir.mkdir()
    helm = bin_dir / "helm"
    build = f'cp {mirror}/*.tgz "$3/charts/"' if works else "echo unreachable >&2; exit 1"
    helm.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {bin_dir}/calls\n'
        f'if [[ "$1 $2" == "dependency build" ]]; then {build}; fi\n'
    )
    helm.chmod(0o755)


def test_helm_builds_the_dependencies_from_the_repositories(chart, mirror, tmp_path):
    _fake_helm(tmp_path / "bin", mirror, works=True)
    result = _run(chart, path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert f"dependency build {chart}" in calls
    assert "repo add --force-update bigbertha-milvus https://zilliztech.github.io/milvus-helm/" in (
        calls
    )
    assert _filled(chart) == {f"{n}-{v}.tgz" for n, v in PINS.items()}


def test_unreachable_repositories_fall_back_to_the_mirror(chart, mirror, tmp_path):
    _fake_helm(tmp_path / "bin", mirror, works=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copytree(mirror, shared / "charts")
    result = _run(chart, path=f"{tmp_path / 'bin'}:/usr/bin:/bin", BIGBERTHA_SHARED=str(shared))
    assert result.returncode == 0, result.stderr
    assert "unreachable; using the mirror" in result.stdout
    assert _filled(chart) == {f"{n}-{v}.tgz" for n, v in PINS.items()}


def test_nothing_to_fill_from_says_what_to_set(chart):
    result = _run(chart)
    assert result.returncode != 0 and "BIGBERTHA_CHART_MIRROR" in result.stderr


def test_this_checkout_holds_the_pinned_archives() -> None:
    """What every other chart test renders with (make setup runs make deps)."""
    filled = {p.name for p in (ROOT / "charts").glob("*.tgz")}
    assert filled == {f"{n}-{v}.tgz" for n, v in PINS.items()}, "run `make deps`"
    assert os.access(SCRIPT, os.X_OK)
