"""Every registered subcommand has working help; unknown ones fail cleanly."""

from __future__ import annotations

import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from bigbertha.cli import app

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    root = get_command(app)
    paths: list[list[str]] = []

    def walk(command, prefix):
        paths.append(prefix)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


COMMANDS = _command_paths()


def test_the_walk_finds_nested_subcommands():
    assert ["version"] in COMMANDS and ["config", "show"] in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "bigbertha")
def test_every_subcommand_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: bigbertha {' '.join(path)}".rstrip() in " ".join(result.output.split())


def test_unknown_subcommand_exits_2():
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


def test_demo_without_the_local_platform_says_what_to_install(monkeypatch):
    import bigbertha.local

    monkeypatch.setitem(sys.modules, "bigbertha.local.demo", None)  # as in an image
    # Also when an earlier test imported it (test_errors imports every module): `from pkg
    # import mod` finds an imported submodule as the package's attribute, not in sys.modules.
    monkeypatch.delattr(bigbertha.local, "demo", raising=False)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: bigbertha demo needs the local platform (bigbertha.local.demo is missing): "
        "install bigbertha[demo] from a clone of the repository (make demo)"
    )


def test_path_flags_reach_the_commands_absolute(clean_env, monkeypatch):
    # `make demo` passes no --workdir: the relative default must not reach the services.
    from bigbertha.local import demo
    from bigbertha.training import data as training_data

    seen: dict[str, object] = {}
    monkeypatch.setattr(
        demo, "run", lambda workdir, **kw: seen.setdefault("workdir", workdir) and 0
    )
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert seen["workdir"] == clean_env / ".bigbertha" / "demo"

    def prepare(settings, data, output, eval_output, lineage):
        seen.update(data=data, output=output, eval_output=eval_output)
        return {}

    monkeypatch.setattr(training_data, "prepare", prepare)
    result = runner.invoke(
        app,
        [
            *("prepare-data", "--output", "out/train.jsonl", "--eval-output", "out/eval.jsonl"),
            *("--data", "a.jsonl", "--data", "s3://b/k"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["output"] == f"{clean_env}/out/train.jsonl"
    assert seen["eval_output"] == f"{clean_env}/out/eval.jsonl"
    assert seen["data"] == [f"{clean_env}/a.jsonl", "s3://b/k"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "No such command 'frobnicate'."),
        (["--bogus"], "No such option: --bogus"),
        (["config", "show", "--nope"], "No such option: --nope"),
        (["demo", "--raters", "x"], "Invalid value for --raters: must be challenger or champion"),
        (["ask", "q", "--feedback", "meh"], "--feedback 'meh': must be 'up' or 'down'"),
        (["prepare-data", "--output"], "Option '--output' requires an argument."),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_every_exit_2_is_one_error_line(argv: list[str], message: str) -> None:
    """A usage error (Typer's) and a ConfigError (ours) print the same way: one `error:` line
    on stderr, exit 2, no boxed usage panel to parse."""
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert result.stdout == ""


def test_a_bare_group_still_prints_its_help() -> None:
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2 and "Usage: bigbertha config" in result.output
