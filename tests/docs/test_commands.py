"""Every command README.md and docs/*.md tell a user to run works as written: `bigbertha ...`
parses with the real CLI, `make T` names a Makefile target, `helm install/upgrade` renders the
real chart with the values files it names (a cluster is needed for the rest: its subcommand,
flags and files are checked), and the promtool snippet runs on the render and checks our rules,
not kube-prometheus-stack's. README's list of subcommands is the CLI's."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.exceptions import TyperException

from bigbertha.cli import app
from tests.chart.render import ENV_FILES, render_env
from tests.docs.snippets import ROOT, Command, commands, inline_commands, shell_blocks
from tests.services import require_binary

CLI: Any = typer.main.get_command(app)


def _resolve(argv: tuple[str, ...]) -> tuple[Any, str, list[str]]:
    """(click command, its path, the rest of argv) for `bigbertha <group>... <command> args`."""
    command, path, rest = CLI, "bigbertha", list(argv[1:])
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"`{path} {name}`: no such subcommand"
        command, path = command.commands[name], f"{path} {name}"
    return command, path, rest


def _ids(found: list[Command]) -> list[Any]:
    return [pytest.param(c, id=f"{c.where} {' '.join(c.argv)}"[:90]) for c in found]


@pytest.mark.parametrize("command", _ids(commands("bigbertha")))
def test_every_bigbertha_command_in_a_snippet_parses(command: Command) -> None:
    cli, path, rest = _resolve(command.argv)
    try:
        cli.make_context(path, rest)
    except TyperException as exc:
        pytest.fail(f"{command}: {exc.format_message()}")


@pytest.mark.parametrize("command", _ids(inline_commands("bigbertha")))
def test_every_bigbertha_command_in_the_prose_names_real_flags(command: Command) -> None:
    """Prose names a flag without its value (`ask --server`): the subcommand and every flag
    must exist."""
    cli, path, rest = _resolve(command.argv)
    known = {opt for param in cli.params for opt in param.opts}
    unknown = [f for f in rest if f.startswith("-") and f.split("=")[0] not in known | {"--help"}]
    assert not unknown, f"{command}: `{path}` has no {unknown}"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", text, re.M))


@pytest.mark.parametrize("command", _ids(commands("make") + inline_commands("make")))
def test_every_make_command_names_real_targets(command: Command) -> None:
    targets = [a for a in command.argv[1:] if "=" not in a and not a.startswith("-")]
    assert targets, command
    assert set(targets) <= _make_targets(), f"{command}: no such target in the Makefile"


# helm's own flags the docs use, per subcommand (helm v3 `helm <cmd> --help`): a flag outside
# these is a typo or needs a look before it is added here.
HELM_FLAGS = {
    "install": {"-n", "-f", "--wait", "--timeout"},
    "upgrade": {"-n", "-f", "--wait", "--timeout"},
    "test": {"-n"},
    "uninstall": {"-n"},
    "history": {"-n"},
    "rollback": {"-n", "--wait", "--timeout"},
    "template": set(),
    "lint": set(),
    "push": set(),
    "repo": set(),
    "dependency": set(),
    "diff": {"-n", "-f"},  # the helm-diff plugin: `helm diff upgrade` takes upgrade's flags
}
# -f files a guide has the reader write first (not in the repository), with where.
USER_FILES = {
    "airgap.yaml": "docs/air-gapped.md writes it in its step before the install",
    "cluster.yaml": "docs/install.md writes it in step 3: the cluster's API server CIDRs",
    "keep-names.yaml": "CHANGELOG.md's upgrade from 0.1.0 under another release name",
}


def _helm_cases() -> list[Any]:
    return _ids(commands("helm") + inline_commands("helm"))


@pytest.mark.parametrize("command", _helm_cases())
def test_every_helm_command_is_a_real_subcommand_with_real_flags_and_files(
    command: Command,
) -> None:
    argv = list(command.argv[1:])
    assert argv and argv[0] in HELM_FLAGS, f"{command}: unknown helm subcommand"
    flags = {a for a in argv if a.startswith("-")}
    assert flags <= HELM_FLAGS[argv[0]], f"{command}: unexpected {flags - HELM_FLAGS[argv[0]]}"
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"]
    for name in files:
        assert (ROOT / name).is_file() or name in USER_FILES, f"{command}: no {name}"


def _env_of(files: list[str]) -> str | None:
    names = tuple(Path(f).stem for f in files if f.startswith("values/"))
    return next((env for env, layered in ENV_FILES.items() if layered == names), None)


def _installs() -> list[Any]:
    found = []
    for c in commands("helm"):
        argv = [a for a in c.argv if a != "diff"]
        if argv[1] in {"install", "upgrade"} and "." in argv:
            found.append(c)
    return _ids(found)


@pytest.mark.parametrize("command", _installs())
def test_every_documented_install_renders_the_chart(command: Command) -> None:
    argv = list(command.argv)
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"]
    env = _env_of(files)
    assert env is not None, f"{command}: {files} is not an environment tests/chart renders"
    docs = render_env(env)
    assert any(d["kind"] == "Deployment" and "chatbot" in d["metadata"]["name"] for d in docs)


def test_the_promtool_snippet_checks_our_rules_not_the_stacks(tmp_path: Path) -> None:
    """docs/tuning-alerts.md's snippet, run as written (its output file moved to tmp_path): it
    renders the chart with the values file, and promtool checks BigBertha's alerts."""
    (block,) = [
        b for _, b in shell_blocks(ROOT / "docs" / "tuning-alerts.md") if "promtool check" in b
    ]
    rules = tmp_path / "rules.yaml"
    promtool = require_binary("promtool")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.replace("/tmp/bigbertha-rules.yaml", str(rules))],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{Path(promtool).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {g["name"].split(".")[0] for g in groups} == {"bigbertha"}, "only our groups"
    assert "BigBerthaNegativeFeedbackHigh" in alerts  # what the guide's next step greps for


@pytest.mark.parametrize("command", _ids(commands("promtool") + inline_commands("promtool")))
def test_every_promtool_command_is_a_real_subcommand(command: Command) -> None:
    words = [a for a in command.argv[1:] if not a.startswith("-") and "/" not in a]
    result = subprocess.run(
        [require_binary("promtool"), *words[:2], "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"{command}: {result.stderr}"


def test_readme_lists_every_subcommand_and_only_those() -> None:
    text = (ROOT / "README.md").read_text()
    listed = text.split("`bigbertha --help` lists them:", 1)[1].split(".\n", 1)[0]
    names = {span.split()[0] for span in re.findall(r"`([a-z][\w -]*)`", listed)}
    assert names == set(CLI.commands), (
        f"README's list differs from `bigbertha --help`: missing "
        f"{sorted(set(CLI.commands) - names)}, extra {sorted(names - set(CLI.commands))}"
    )
