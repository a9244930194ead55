"""The `bigbertha` command: one subcommand per job, each a thin call into its module.

Heavy libraries (torch, transformers, llama_index) are imported inside the subcommands, so
`bigbertha --help` and the exporter start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bigbertha import __version__, logs
from bigbertha.errors import BigberthaError
from bigbertha.settings import Settings, load, masked, sources

app = typer.Typer(
    name="bigbertha",
    help="BigBertha: Kubernetes-native LLMOps jobs and services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (sections as in `config show`)."),
]


class State:
    """What the root callback parsed, shared with subcommands through the Typer context."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self.overrides: dict[str, Any] = {}

    def settings(self, **overrides: dict[str, Any]) -> Settings:
        """Load settings (file < env < flags) and configure logging from them."""
        self.overrides = {
            k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in overrides.items()
        }
        settings = load(self.config_file, self.overrides)
        logs.configure(settings.log.level, settings.log.format)
        return settings


def fail(exc: BigberthaError) -> typer.Exit:
    """Print a BigberthaError as its message (one line per problem) and pick its exit code."""
    for line in str(exc).splitlines():
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(exc.exit_code)


@app.callback()
def main(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Settings come from --config, then BIGBERTHA_* env vars (nested with __), then flags."""
    ctx.obj = State(config)


@app.command()
def version() -> None:
    """Print the BigBertha version."""
    typer.echo(__version__)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object, sections nested.")
    ] = False,
) -> None:
    """Print the effective settings, secrets masked, and where each value came from."""
    state: State = ctx.obj
    try:
        settings = state.settings()
        origin = sources(settings, state.config_file, state.overrides)
    except BigberthaError as exc:
        raise fail(exc) from None
    values = masked(settings)
    if as_json:
        doc = {
            section: {
                key: {"value": value, "source": origin[section][key]}
                for key, value in items.items()
            }
            for section, items in values.items()
        }
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for section, items in values.items():
        typer.echo(f"[{section}]")
        for key, value in items.items():
            shown = "" if value is None else value
            typer.echo(f"  {key} = {shown}    # {origin[section][key]}")


@app.command("exporter")
def exporter_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (exporter.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (exporter.port).")] = None,
) -> None:
    """Serve Prometheus /metrics (telemetry read from Redis) and /healthz until stopped."""
    from bigbertha.exporter import serve

    try:
        serve(ctx.obj.settings(exporter={"host": host, "port": port}))
    except BigberthaError as exc:
        raise fail(exc) from None


def run() -> None:  # pragma: no cover - console entry point for `python -m bigbertha`
    sys.exit(app())
