"""docs/values.md is what readme-generator-for-helm makes of values.yaml's `## @param` comments.

The generator (npm, pinned in ci/package-lock.json, installed by `make setup`) also refuses a
value without a comment and a comment without a value, so this test is the values-documented
check as well as the drift check.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.services import missing

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "ci/node_modules/.bin/readme-generator"
DOCS = ROOT / "docs/values.md"


@pytest.fixture(scope="module")
def generator() -> Path:
    if not TOOL.exists() or shutil.which("node") is None:
        message = f"{TOOL.relative_to(ROOT)} (and node) missing: run `make setup` or `make docs`"
        missing(message)
    return TOOL


def generate(generator: Path, values: Path, readme: Path) -> str:
    """Regenerate `readme`'s Parameters section from `values`; the new text of `readme`."""
    result = subprocess.run(
        [str(generator), "--values", str(values), "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert result.returncode == 0, (
        f"readme-generator rejects {values.name}'s `## @param` comments (it documents leaves: "
        "give a non-empty map one `## @param a.b.c` per key, or `## @extra a.b` plus "
        "`## @skip a.b` for a list of objects):\n"
        + "\n".join(errors or [result.stdout[-2000:], result.stderr[-2000:]])
    )
    return readme.read_text()


def test_values_reference_is_up_to_date(generator: Path, tmp_path: Path) -> None:
    readme = tmp_path / "values.md"
    shutil.copy(DOCS, readme)
    regenerated = generate(generator, ROOT / "values.yaml", readme)
    assert regenerated == DOCS.read_text(), "Documentation outdated! run make docs"
    assert "| `dashboards.enabled`" in regenerated


def test_drift_and_undocumented_values_are_caught(generator: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    readme = tmp_path / "values.md"
    values.write_text("## @section Demo\n\n## @param replicas Number of pods\nreplicas: 1\n")
    readme.write_text("# Demo\n\n## Parameters\n")
    first = generate(generator, values, readme)
    assert "| `replicas` | Number of pods | `1`   |" in first

    values.write_text("## @section Demo\n\n## @param replicas Number of pods\nreplicas: 3\n")
    assert generate(generator, values, readme) != first  # a changed default is drift

    values.write_text("## @param replicas Number of pods\nreplicas: 1\nundocumented: true\n")
    with pytest.raises(AssertionError, match="Missing metadata for key: undocumented"):
        generate(generator, values, readme)
