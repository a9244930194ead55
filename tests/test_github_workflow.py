""".github/workflows/ci.yml stays a mirror of .ci/run, and its kind job installs what we build."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github/workflows/ci.yml"


def jobs() -> dict[str, Any]:
    # PyYAML reads the `on:` key as True; only the jobs matter here.
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return loaded


def runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_test_job_runs_what_the_project_ci_runs() -> None:
    ci_run = (ROOT / ".ci/run").read_text()
    assert "make test" in ci_run and "CI=true" in ci_run
    job = jobs()["test"]
    (step,) = [s for s in job["steps"] if s.get("run") == "make test"]
    assert step["env"]["CI"] == "true"
    # Then the demo, bounded the same way (after the tests, as in .ci/run).
    (demo_line,) = [line for line in ci_run.splitlines() if line.startswith("phase demo ")]
    demo_command = demo_line.split("phase demo ", 1)[1]
    (demo,) = [s for s in job["steps"] if "make demo" in s.get("run", "")]
    assert demo["run"] == demo_command and demo["env"]["CI"] == "true"
    assert job["steps"].index(step) < job["steps"].index(demo)
    assert ci_run.index("phase test make test") < ci_run.index(demo_line)
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    required = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert required and python["with"]["python-version"] == required[1]
    # The test job checks the repository out beside ../shared, where the tests look for it.
    paths = {
        s["with"]["path"] for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")
    }
    assert paths == {"bigbertha", "shared"}


def test_kind_job_loads_every_built_image_and_installs_an_existing_values_file() -> None:
    job = jobs()["kind-install"]
    script = runs(job)
    assert "docker buildx bake -f docker/docker-bake.json" in script
    bake = json.loads((ROOT / "docker/docker-bake.json").read_text())
    built = {tag.split("/")[-1].split(":")[0] for t in bake["target"].values() for tag in t["tags"]}
    loop = re.search(r"for image in ([\w -]+); do", script)
    assert loop and set(loop[1].split()) == built
    values = re.findall(r"helm install \S+ \. .*?-f (\S+)", script)
    assert values and all((ROOT / v).is_file() for v in values)
    assert "ci/install-crds.sh" in script.split("helm install")[0], "CRDs must come first"
    assert (ROOT / "ci/install-crds.sh").is_file()
