"""The exit-code contract: every error declares its class, and the one CLI boundary maps each
class to its code (the workflows' retry policy depends on it)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bigbertha
from bigbertha.cli import app
from bigbertha.core import errors
from bigbertha.core.errors import (
    BigberthaError,
    Busy,
    ConfigError,
    ExitCode,
    InputError,
    Interrupted,
    ServiceUnavailable,
)

CATEGORIES = (ConfigError, InputError, ServiceUnavailable, Busy, Interrupted)


def all_error_classes() -> set[type[BigberthaError]]:
    for module in pkgutil.walk_packages(bigbertha.__path__, "bigbertha."):
        if module.name != "bigbertha.__main__":  # that one runs the CLI
            importlib.import_module(module.name)  # every module, so every subclass exists
    found: set[type[BigberthaError]] = set()
    todo: list[type[BigberthaError]] = [BigberthaError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_every_error_belongs_to_one_exit_code_class() -> None:
    classes = all_error_classes()
    assert len(classes) > len(CATEGORIES)  # the walk found the module-specific errors too
    unclassified = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, CATEGORIES)
    )
    assert not unclassified, "each error must subclass ConfigError, InputError, ..."


def test_an_error_without_a_class_cannot_even_be_defined() -> None:
    with pytest.raises(TypeError, match="must declare its ExitCode"):
        type("Vague", (BigberthaError,), {})


def test_the_codes_are_the_documented_ones() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "CONFIG": 2,
        "INPUT": 3,
        "KEPT": 4,
        "UNAVAILABLE": 69,
        "BUG": 70,
        "BUSY": 75,
        "INTERRUPTED": 130,
        "TERMINATED": 143,
    }
    assert errors.__doc__ is not None and "| 69" in errors.__doc__


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (ConfigError("exporter.port: 70000 is not a port\nexporter.host: empty"), 2),
        (InputError("3 documents rejected"), 3),
        (ServiceUnavailable("Redis at redis://x:6379: connection refused"), 69),
        (Busy("another retrain holds the lock"), 75),
        (Interrupted(signal.SIGINT), 130),
        (Interrupted(signal.SIGTERM), 143),
    ],
)
def test_the_cli_boundary_prints_the_message_and_exits_with_its_class(
    monkeypatch: pytest.MonkeyPatch, raised: BigberthaError, code: int
) -> None:
    def serve(settings: object) -> None:
        raise raised

    monkeypatch.setattr("bigbertha.telemetry.exporter.serve", serve)
    result = CliRunner().invoke(app, ["exporter"])
    assert result.exit_code == code
    assert result.stderr.splitlines() == [f"error: {line}" for line in str(raised).splitlines()]
    assert "Traceback" not in result.output


def test_anything_else_is_a_bug_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(settings: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr("bigbertha.telemetry.exporter.serve", serve)
    result = CliRunner().invoke(app, ["exporter"])
    assert result.exit_code == ExitCode.BUG == 70
    assert "Traceback" in result.stderr and "KeyError: 'oops'" in result.stderr
    assert result.stderr.rstrip().endswith("error: unexpected KeyError (a bug: please report it)")


def test_every_exit_code_is_in_the_runbook_and_the_module_table() -> None:
    """docs/runbooks.md's table and errors.py's list every code the CLI or the demo returns:
    no more, no fewer (the demo's 4 is ExitCode.KEPT)."""
    runbooks = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"
    section = runbooks.read_text().split("## Exit codes of the jobs", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    in_module = {int(code) for code in re.findall(r"^\| (\d+) +\|", errors.__doc__ or "", re.M)}
    assert documented == in_module == {int(c) for c in ExitCode}
