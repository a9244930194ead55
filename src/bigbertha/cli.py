"""The `bigbertha` command: one subcommand per job, each a thin call into its module.

Heavy libraries (torch, transformers, llama_index) are imported inside the subcommands, so
`bigbertha --help` and the exporter start fast.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # Typer's vendored click
from typer.core import TyperGroup
from typer.exceptions import TyperException

from bigbertha import __version__
from bigbertha.core import logs
from bigbertha.core.errors import BigberthaError, ConfigError, ExitCode
from bigbertha.core.interrupts import interruptible
from bigbertha.core.masking import mask_credentials
from bigbertha.core.settings import (
    Settings,
    absolute_location,
    absolute_model_ref,
    load,
    masked,
    sources,
)


def _usage_exit(exc: UsageError) -> Exception:
    """A usage error as `error:` lines and exit 2 (ExitCode.CONFIG); a group called without a
    subcommand still prints its help."""
    if isinstance(exc, NoArgsIsHelpError):
        return exc
    for line in mask_credentials(exc.format_message()).splitlines() or ["bad usage"]:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(int(ExitCode.CONFIG))


class BigberthaGroup(TyperGroup):
    """The one error boundary: a BigberthaError is its message and its class's exit code
    (`bigbertha.core.errors`); a usage error (unknown subcommand or flag, bad flag value) is
    exit 2 in the same `error:` format as a ConfigError, not Typer's boxed panel; anything else
    is a bug, printed with its traceback, exit 70."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:  # the root's own flags are parsed here, before invoke
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            raise _usage_exit(exc) from None

    def invoke(self, ctx: Any) -> Any:  # a click Context (Typer vendors click privately)
        try:
            return super().invoke(ctx)
        except BigberthaError as exc:
            # A library's message may quote a URI with its password (core/masking.py).
            for line in mask_credentials(str(exc)).splitlines() or [type(exc).__name__]:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except UsageError as exc:
            raise _usage_exit(exc) from None
        except (TyperException, typer.Exit, typer.Abort):
            raise  # explicit exits and Ctrl-C keep Typer's handling
        except Exception as exc:
            typer.echo(mask_credentials(traceback.format_exc()).rstrip("\n"), err=True)
            typer.echo(
                f"error: unexpected {type(exc).__name__} (a bug: please report it)", err=True
            )
            raise typer.Exit(int(ExitCode.BUG)) from None


app = typer.Typer(
    cls=BigberthaGroup,
    name="bigbertha",
    help="BigBertha: Kubernetes-native LLMOps jobs and services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


# Flags that name local files are made absolute as they are parsed (URIs pass unchanged), so a
# path handed on to a service or subprocess with its own working directory names the same file.
def _abs_path(value: Path | None) -> Path | None:
    return None if value is None else value.expanduser().absolute()


def _abs_location(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list):
        return [absolute_location(v) for v in value]
    return None if value is None else absolute_location(value)


def _abs_model(value: str | None) -> str | None:
    return None if value is None else absolute_model_ref(value)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML settings file (sections as in `config show`).",
        callback=_abs_path,
    ),
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
    settings = state.settings()
    origin = sources(settings, state.config_file, state.overrides)
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
    from bigbertha.telemetry.exporter import serve

    serve(ctx.obj.settings(exporter={"host": host, "port": port}))


@app.command("dashboard")
def dashboard_command(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Where to write the dashboard JSON.", callback=_abs_path
        ),
    ] = Path("files/dashboards/bigbertha.json"),
    negative_feedback_threshold: Annotated[
        float | None,
        typer.Option(help="Thumbs-down ratio drawn as the alert line (the chart overrides it)."),
    ] = None,
) -> None:
    """Generate the Grafana dashboard the chart ships (needs the dev dependencies)."""
    from bigbertha.telemetry import dashboard

    threshold = negative_feedback_threshold
    if threshold is None:
        threshold = dashboard.DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD
    path = dashboard.write(output, threshold)
    typer.echo(f"wrote {path}")


@app.command("demo")
def demo_command(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the stack up until Ctrl-C.")] = False,
    margin: Annotated[
        float | None,
        typer.Option(help="Override promote.margin (a huge one makes the gate keep the champion)."),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="State, logs and report.html go here.", callback=_abs_path)
    ] = Path(".bigbertha/demo"),
    tiny: Annotated[
        bool, typer.Option("--tiny", help="A tiny random Llama instead of SmolLM2 (CI speed).")
    ] = False,
    challenge_again: Annotated[
        float | None,
        typer.Option(
            help="After a promotion, rate the new champion down and retrain again with this"
            " gate margin (a huge one shows a challenger losing the gate)."
        ),
    ] = None,
    raters: Annotated[
        str,
        typer.Option(
            help="challenger or champion: the side the live canary's scripted raters prefer"
            " (champion shows the canary retiring a challenger that passed the gate)."
        ),
    ] = "challenger",
) -> None:
    """Run both loops on this machine: ingest, ask, alert, fine-tune, gate, hot-swap, report.

    Exit code 0 when the champion moved (and a --challenge-again challenger lost), 4 when the
    gate or the live canary kept the champion, 130/143 on Ctrl-C/SIGTERM; a failure exits with
    its class's code (69 a stage did not happen in time or a service is down, 2 configuration,
    70 a bug).
    """
    try:
        from bigbertha.local import demo
    except ModuleNotFoundError as exc:  # the images leave the local platform out
        raise ConfigError(
            f"bigbertha demo needs the local platform ({exc.name} is missing): "
            "install bigbertha[demo] from a clone of the repository (make demo)"
        ) from exc

    if raters not in ("challenger", "champion"):
        raise typer.BadParameter("must be challenger or champion", param_hint="--raters")
    raise typer.Exit(
        demo.run(
            workdir,
            keep=keep,
            margin=margin,
            tiny=tiny,
            challenge_again=challenge_again,
            raters="champion" if raters == "champion" else "challenger",
        )
    )


@app.command("ingest")
def ingest_command(
    ctx: typer.Context,
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="s3://bucket/key, s3://bucket/prefix/, a local file or a directory.",
            metavar="SOURCE",
            show_default=False,
        ),
    ] = None,
    event_name: Annotated[
        str | None,
        typer.Option(help="MinIO event name: s3:ObjectRemoved:* deletes, s3:ObjectCreated:* adds."),
    ] = None,
    key_encoding: Annotated[
        str,
        typer.Option(
            help="raw (keys as Argo's minio EventSource sends them) or query (url.QueryEscape'd "
            "keys from MinIO webhook notification targets).",
        ),
    ] = "raw",
    delete: Annotated[
        bool, typer.Option("--delete", help="Remove everything indexed from the sources.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Also write the JSON report to this file.", callback=_abs_path),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Backfill: ingest everything under s3://bucket/path/ in batches of "
            "--batch-size, --parallelism at a time (with --plan-out: only list and split)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Backfill: documents per batch.", min=1)] = 100,
    parallelism: Annotated[
        int, typer.Option(help="Backfill: batches ingested at once in this process.", min=1)
    ] = 2,
    plan_out: Annotated[
        Path | None,
        typer.Option(
            help="With --prefix: write the batches (a JSON list) here and ingest nothing.",
            callback=_abs_path,
        ),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(help="Ingest one batch of --plan-out's list (its JSON object)."),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(
            help="With --batch: write the batch's summary (totals, failures) here.",
            callback=_abs_path,
        ),
    ] = None,
    merge: Annotated[
        str | None,
        typer.Option(help="Fan-in: one report from a JSON list of batch summaries."),
    ] = None,
) -> None:
    """Index documents into Milvus (or --delete them); exit 0 ok, 3 some rejected, 69 storage or
    Milvus unreachable, 2 bad arguments, 143/130 stopped by SIGTERM/SIGINT.

    Prints the JSON report as the last line on stdout; --report is written however it ends.
    Backfill (--prefix, --batch, --merge): docs/capacity.md; a batch exits 0 with rejected
    documents (named in its summary), the merged report 3.
    """
    from bigbertha.documents import ingest

    if prefix or batch or merge:
        _backfill(ctx, prefix, batch_size, parallelism, plan_out, batch, summary, merge, report)
        return
    if key_encoding not in ("raw", "query"):
        raise typer.BadParameter("must be raw or query", param_hint="--key-encoding")
    result = ingest.run(
        ctx.obj.settings(),
        source or [],
        event_name=event_name,
        key_encoding="query" if key_encoding == "query" else "raw",
        delete=delete,
        report_path=report,
    )
    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    raise typer.Exit(result.exit_code)


def _backfill(
    ctx: typer.Context,
    prefix: str | None,
    batch_size: int,
    parallelism: int,
    plan_out: Path | None,
    batch: str | None,
    summary: Path | None,
    merge: str | None,
    report: Path | None,
) -> None:
    from bigbertha.core.errors import ConfigError
    from bigbertha.documents import backfill

    if sum(x is not None for x in (prefix, batch, merge)) != 1:
        raise ConfigError("pass one of --prefix, --batch (it names its prefix) or --merge")
    if merge is not None:
        try:
            summaries = json.loads(merge)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--merge: not a JSON list of batch summaries ({exc})") from exc
        merged = backfill.merge(summaries if isinstance(summaries, list) else [summaries])
        backfill.write_json(report, merged)
        typer.echo(json.dumps(merged, ensure_ascii=False))
        raise typer.Exit(merged["exit_code"])
    settings = ctx.obj.settings()
    if batch is not None:
        one = backfill.Batch.parse(batch)
        result, _ = backfill.run_batch(settings, one, report)
        backfill.write_json(summary, result)
        typer.echo(json.dumps(result, ensure_ascii=False))
        # Rejected documents are reported, not retried: the batch itself succeeded.
        raise typer.Exit(0 if result["exit_code"] == 3 else result["exit_code"])
    assert prefix is not None
    if plan_out is not None:
        batches = [backfill.as_dict(b) for b in backfill.plan(settings, prefix, batch_size)]
        backfill.write_json(plan_out, batches)
        typer.echo(json.dumps(batches, ensure_ascii=False))
        return
    merged = backfill.backfill(settings, prefix, batch_size=batch_size, parallelism=parallelism)
    backfill.write_json(report, merged)
    typer.echo(json.dumps(merged, ensure_ascii=False))
    raise typer.Exit(merged["exit_code"])


@app.command("reindex")
def reindex_command(ctx: typer.Context) -> None:
    """Give a collection from before hybrid retrieval its BM25 full-text index, from its own
    stored chunks (nothing re-embedded, nothing lost; rerun to finish an interrupted one).

    Run it while no ingestion runs. Exit 0 done (or nothing to do), 2 no such collection or a
    mismatched embedding model, 69 Milvus unreachable. Prints {"collection", "rows"}.
    """
    from bigbertha.documents import vectorstore

    settings = ctx.obj.settings()
    rows = vectorstore.reindex(settings)
    typer.echo(json.dumps({"collection": settings.milvus.collection, "rows": rows}))


# --- TRAIN: prepare-data, finetune, evaluate, promote, retrain -------------------------------
AlertNameOption = Annotated[
    str | None, typer.Option(help="Name of the alert that triggered the run (lineage tag).")
]
AlertLabelsOption = Annotated[
    str | None, typer.Option(help="The alert's labels as a JSON object (lineage tag).")
]
WorkflowNameOption = Annotated[
    str | None, typer.Option(help="Argo workflow name, {{workflow.name}} (lineage tag).")
]
DataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Curated JSONL (s3://bucket/key or path); repeatable.",
        callback=_abs_location,
    ),
]
ReportOption = Annotated[
    str | None,
    typer.Option(
        help="Also write the JSON result here (path or s3://bucket/key).", callback=_abs_location
    ),
]
GoldenOption = Annotated[
    str | None,
    typer.Option(
        help="Golden evaluation set, path or s3:// (evaluate.golden).", callback=_abs_location
    ),
]


def _lineage(
    alert_name: str | None, alert_labels: str | None, workflow: str | None
) -> dict[str, str]:
    if alert_labels:
        try:
            labels = json.loads(alert_labels)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON ({exc})", param_hint="--alert-labels") from None
        if not isinstance(labels, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--alert-labels")
        alert_labels = json.dumps(labels, sort_keys=True)
    values = {"alert_name": alert_name, "alert_labels": alert_labels, "workflow_name": workflow}
    return {k: v for k, v in values.items() if v}


@app.command("prepare-data")
def prepare_data_command(
    ctx: typer.Context,
    output: Annotated[
        str,
        typer.Option(
            help="Where to write the dataset JSONL (path or s3://).", callback=_abs_location
        ),
    ],
    data: DataOption = None,
    eval_output: Annotated[
        str | None,
        typer.Option(
            help="Also write the held-out up-rated turns here, as evaluation rows "
            "(finetune.eval_share of conversations; path or s3://).",
            callback=_abs_location,
        ),
    ] = None,
    feedback_examples: Annotated[
        int | None, typer.Option(help="Max up-rated chat turns (finetune.feedback_examples).")
    ] = None,
    min_examples: Annotated[
        int | None, typer.Option(help="Fewer usable examples fail (finetune.min_examples).")
    ] = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
    workflow_name: WorkflowNameOption = None,
) -> None:
    """Build the training set: curated JSONL + up-rated feedback turns, checked and hashed.

    Flags: --output URI (required), --data URI (repeatable; default finetune.data),
    --eval-output URI, --feedback-examples N, --min-examples N, --alert-name, --alert-labels
    JSON, --workflow-name. Malformed rows are reported and skipped; too few examples exit 3
    before anything trains. Writes the training file of record (finetune trains on it as is)
    and its manifest (<output>.manifest.json: data card, hash of the file's bytes, lineage), the
    held-out conversations' up-rated turns to --eval-output, and logs them to an MLflow run
    tagged with the lineage. Prints the manifest as JSON.
    """
    from bigbertha.training import data as training_data

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    settings = ctx.obj.settings(
        finetune={"feedback_examples": feedback_examples, "min_examples": min_examples}
    )
    with interruptible():
        result = training_data.prepare(
            settings, data or None, output, eval_output=eval_output, lineage=lineage
        )
    typer.echo(json.dumps(result))


@app.command("finetune")
def finetune_command(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Option(
            help="The training file prepare-data wrote (--output), trained on as written; "
            "default: the one finetune.data entry.",
            callback=_abs_location,
        ),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="smollm2, a path, an HF id or models:/<name>@<alias> (finetune.base_model)."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(help="Adapter destination, path or s3:// prefix (finetune.output)."),
    ] = None,
    quantize: Annotated[
        str | None, typer.Option(help="auto (4-bit on GPU), 4bit or none (finetune.quantize).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps; -1 uses epochs.")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over the data (finetune.epochs).")
    ] = None,
    merge: Annotated[
        bool | None, typer.Option("--merge/--no-merge", help="Also save merged weights.")
    ] = None,
    nproc_per_node: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Data-parallel processes on this node, one per GPU (workflows.finetune.gpus): "
            "above 1 the command runs again in that many processes under torchrun.",
        ),
    ] = 1,
    report: ReportOption = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
    workflow_name: WorkflowNameOption = None,
) -> None:
    """Fine-tune a LoRA adapter (QLoRA when quantising) with trl's SFTTrainer.

    Flags: --data URI (prepare-data's output: trained on as written, its hash checked against
    the manifest beside it; nothing is rebuilt or added), --base-model REF, --output URI,
    --quantize auto|4bit|none, --max-steps N, --epochs X, --merge/--no-merge, --report URI,
    --nproc-per-node N, --alert-name, --alert-labels JSON, --workflow-name. Other
    hyperparameters come from the finetune settings section. Prints the result (adapter
    location, base, dataset hash, steps, loss) as JSON. With --nproc-per-node above 1, or in a
    Kubeflow Trainer TrainJob pod, the same command line runs once per process under torchrun
    (training.distributed); process 0 publishes the adapter and prints the result.
    """
    from bigbertha.training import distributed, finetune

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    settings = ctx.obj.settings(
        finetune={
            "base_model": base_model,
            "output": output,
            "quantize": quantize,
            "max_steps": max_steps,
            "epochs": epochs,
            "merge": merge,
        }
    )
    if distributed.needs_launch(nproc_per_node):
        # Refuse bad data here, before any process loads a model (exit 3: not retried).
        finetune.check_data(settings, data)
        raise typer.Exit(distributed.launch(nproc_per_node, _command_line("finetune")))
    with interruptible():  # the MLflow run ends FAILED instead of RUNNING for ever
        result = finetune.run(settings, data=data, lineage=lineage, report=report)
    if distributed.is_main():
        typer.echo(json.dumps(result.to_json()))


def _command_line(command: str) -> list[str]:
    """This process' `bigbertha` arguments, to run again in each torchrun worker."""
    argv = sys.argv[1:]
    if command not in argv:  # called in process (a test's CliRunner), not from a shell
        raise ConfigError(f"{command} with several processes runs from the command line only")
    return argv


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help="Model to benchmark: adapter/model path, s3:// prefix, models:/...",
            callback=_abs_model,
        ),
    ],
    golden: GoldenOption = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="More held-out JSONL after the golden set, path or s3:// (evaluate.data).",
            callback=_abs_location,
        ),
    ] = None,
    max_examples: Annotated[int | None, typer.Option(help="evaluate.max_examples")] = None,
    report: ReportOption = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
    workflow_name: WorkflowNameOption = None,
) -> None:
    """Benchmark a model on the evaluation set with retrieval in the loop: perplexity, token
    F1, ROUGE-L, hit@k, MRR, groundedness, citations, relevancy, abstention, completeness.

    Flags: --model REF (required), --golden URI, --data URI, --max-examples N, --report URI,
    --alert-name,
    --alert-labels JSON, --workflow-name. Logs to MLflow; prints the report as JSON.
    """
    from bigbertha.training import evaluate

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    settings = ctx.obj.settings(evaluate={"max_examples": max_examples, "golden": golden})
    with interruptible():
        result = evaluate.run(settings, model, data=data, report=report, tags=lineage)
    typer.echo(json.dumps(result.to_json()))


@app.command("promote")
def promote_command(
    ctx: typer.Context,
    challenger: Annotated[
        str | None,
        typer.Option(
            help="Fine-tuned adapter: path, s3:// prefix or models:/<name>/<v>.",
            callback=_abs_model,
        ),
    ] = None,
    golden: GoldenOption = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="More held-out JSONL both sides run on after the golden set (evaluate.data).",
            callback=_abs_location,
        ),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            help="Relative gain every gate metric needs across its interval (promote.margin)."
        ),
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Move champion back to the previous version.")
    ] = False,
    evaluation: Annotated[
        str | None,
        typer.Option(
            help="The challenger's `bigbertha evaluate` report, reused if it matches.",
            callback=_abs_location,
        ),
    ] = None,
    report: ReportOption = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
    workflow_name: WorkflowNameOption = None,
) -> None:
    """Register the challenger, gate it against the champion, move `champion` if it wins.

    Flags: --challenger REF (required unless --rollback), --golden URI, --data URI, --margin X,
    --rollback,
    --evaluation URI, --report URI, --alert-name, --alert-labels JSON, --workflow-name. Exit 0
    whether promoted or rejected (the decision is in the printed JSON and on the MLflow version).
    """
    from bigbertha.training import promote

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    if not rollback and not challenger:
        raise typer.BadParameter("required unless --rollback", param_hint="--challenger")
    settings = ctx.obj.settings(promote={"margin": margin}, evaluate={"golden": golden})
    with interruptible():
        if rollback:
            decision = promote.rollback(settings, report=report)
        else:
            assert challenger is not None
            decision = promote.run(
                settings,
                challenger,
                data=data,
                lineage=lineage,
                report=report,
                evaluation=evaluation,
            )
    typer.echo(json.dumps(decision.to_json()))


@app.command("canary")
def canary_command(
    ctx: typer.Context,
    promotion: Annotated[
        str | None,
        typer.Option(
            help="The gate's report (promote --report); no canary started: nothing to do."
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="The challenger version (default: the challenger alias).")
    ] = None,
    retire: Annotated[
        bool, typer.Option("--retire", help="End the canary now, keeping the champion.")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="With --retire: why (recorded).")] = None,
    min_votes: Annotated[
        int | None,
        typer.Option(help="Votes each side needs before the test is looked at (canary.min_votes)."),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(help="Down-vote ratio difference that matters (canary.margin)."),
    ] = None,
    report: ReportOption = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
    workflow_name: WorkflowNameOption = None,
) -> None:
    """Watch the live canary until users' votes decide: promote the challenger or retire it.

    Flags: --promotion URI, --version N, --retire [--reason TEXT], --min-votes N, --margin X,
    --report URI, --alert-name, --alert-labels JSON, --workflow-name. Exit 0 whatever the
    decision (in the printed JSON, on the MLflow version and in bigbertha_promotions_total);
    69 Prometheus or MLflow unreachable at the deadline; 2 bad settings or nothing to retire.
    """
    from bigbertha.models import registry
    from bigbertha.training import canary

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    if version is not None and promotion is not None:
        raise typer.BadParameter(
            "not with --promotion (it names the version)", param_hint="--version"
        )
    if reason is not None and not retire:
        raise typer.BadParameter("only with --retire", param_hint="--reason")
    settings = ctx.obj.settings(canary={"min_votes": min_votes, "margin": margin})
    if retire:
        target = version or registry.alias_version(settings, registry.CHALLENGER)
        if target is None:
            raise ConfigError("no challenger to retire: the registry has no 'challenger' alias")
        why = reason or "retired by hand (bigbertha canary --retire)"
        decision = canary.retire(settings, target, why, lineage=lineage, report=report)
    else:
        decision = canary.run(
            settings, version=version, promotion=promotion, lineage=lineage, report=report
        )
    typer.echo(json.dumps(decision.to_json()))


@app.command("retrain")
def retrain_command(
    ctx: typer.Context,
    check: Annotated[
        bool,
        typer.Option("--check", help="Decide whether this run may train (the DAG's first step)."),
    ] = False,
    decision_file: Annotated[
        Path | None,
        typer.Option(help="With --check: write 'train' or 'skip' here (an Argo output)."),
    ] = None,
    alert_episode: Annotated[
        str, typer.Option(help="The alert episode id the Sensor derived (one run per episode).")
    ] = "",
    cooldown_seconds: Annotated[
        float | None, typer.Option(help="retrain.cooldown_seconds (0: no cooldown).")
    ] = None,
    record_exit: Annotated[
        bool,
        typer.Option("--record-exit", help="Record a Workflow's end (its exit handler)."),
    ] = False,
    status: Annotated[
        str | None, typer.Option(help="With --record-exit: {{workflow.status}}.")
    ] = None,
    failures: Annotated[
        str | None, typer.Option(help="With --record-exit: {{workflow.failures}} (JSON).")
    ] = None,
    workflow_name: WorkflowNameOption = None,
    alert_name: AlertNameOption = None,
    alert_labels: AlertLabelsOption = None,
) -> None:
    """The retraining Workflow's check and exit handler; the pipeline itself is the finetune
    WorkflowTemplate's DAG (run locally by `bigbertha demo`'s gateway), not restated here.

    --check --decision-file PATH [--alert-episode ID --cooldown-seconds S --alert-name
    --alert-labels --workflow-name]: decides and records whether the run trains (one run per
    alert episode, a cooldown per champion version). --record-exit --status S --failures JSON
    [--alert-name --alert-labels --workflow-name]: counts the run, records why it failed, and
    closes what its killed steps left behind. One of the two is required (exit 2 otherwise).
    """
    from bigbertha.training import retrain

    lineage = _lineage(alert_name, alert_labels, workflow_name)
    if check == record_exit:
        raise typer.BadParameter(
            "give --check (the DAG's first step) or --record-exit (its exit handler); the "
            "pipeline runs as the finetune WorkflowTemplate (locally: bigbertha demo)",
            param_hint="--check/--record-exit",
        )
    if check:
        from bigbertha.training import cooldown

        settings = ctx.obj.settings(retrain={"cooldown_seconds": cooldown_seconds})
        decision = cooldown.check(settings, episode=alert_episode, lineage=lineage)
        if not decision.train:
            from bigbertha.telemetry.recorder import Recorder

            # Counted here, where the reason is known; the exit handler counts it no more.
            Recorder.from_settings(settings).record_retrain_run("skipped")
        if decision_file is not None:
            decision_file.write_text(decision.decision, encoding="utf-8")
        typer.echo(json.dumps(decision.to_json()))
        return
    if not status:
        raise typer.BadParameter("--record-exit needs --status", param_hint="--status")
    outcome = retrain.record_exit(ctx.obj.settings(), status, failures or "[]", lineage)
    typer.echo(json.dumps({"result": outcome, "status": status}))


@app.command("ask")
def ask_command(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question to answer from the documents.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    feedback: Annotated[
        str | None,
        typer.Option(help="Rate the answer: up or down (recorded like a thumbs click)."),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Chunks to retrieve (chat.top_k).")] = None,
    server: Annotated[
        str | None,
        typer.Option(help="Ask the running chatbot at this URL (its /api/ask); no model here."),
    ] = None,
    conversation: Annotated[
        str | None,
        typer.Option(
            help="Ask within this conversation (the id an earlier --json answer printed); "
            "during a canary it decides which model answers."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="With --server: seconds to wait for the answer (chat.ask_timeout_seconds).",
        ),
    ] = None,
) -> None:
    """Answer one question with the chatbot's RAG core: answer, sources with scores, timings.

    Exit 0 answered (also without context when Milvus is down: a warning says so), 69 the model
    failed or the --server chatbot is unreachable, not ready, silent past --timeout or answered
    something that is not an answer, 2 bad settings or --feedback value, 3 an empty question.
    """
    from bigbertha.chat import rag

    if feedback not in (None, "up", "down"):
        raise ConfigError(f"--feedback {feedback!r}: must be 'up' or 'down'")
    if server and top_k is not None:
        raise typer.BadParameter("not with --server (it has its chat.top_k)", param_hint="--top-k")
    if server:
        from bigbertha.chat import api as chat_api

        # Logging as configured; the server holds the model settings.
        settings = ctx.obj.settings(chat={"ask_timeout_seconds": timeout})
        answer = rag.Answer.from_dict(
            chat_api.ask_server(
                server,
                question,
                rating=feedback,
                conversation=conversation,
                timeout=settings.chat.ask_timeout_seconds,
                token=settings.chat.api_token.get_secret_value()
                if settings.chat.api_token
                else None,
            )
        )
    else:
        settings = ctx.obj.settings(chat={"top_k": top_k})
        answer = rag.ask_once(settings, question, rating=feedback, conversation=conversation)
    typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False) if as_json else rag.render(answer))
    if answer.error:
        raise typer.Exit(int(ExitCode.UNAVAILABLE))


@app.command("chat")
def chat_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Listen port (chat.port).")] = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0 in a pod).")] = "0.0.0.0",
) -> None:
    """Serve the Streamlit chatbot on chat.port until stopped (one model for all users)."""
    from bigbertha.chat import ui as chat_app

    settings = ctx.obj.settings(chat={"port": port})
    chat_app.serve(settings, host=host, config_file=ctx.obj.config_file)


# --- SERVE: the inference tier's init step and adapter sidecar -------------------------------


@app.command("fetch-base-model")
def fetch_base_model_command(ctx: typer.Context) -> None:
    """Put the inference tier's base model into serving.model_dir (the vLLM pod's init step).

    The source is serving.base_override (a merged champion, models:/<name>/<version>) or else
    serving.base_model: an s3://bucket/prefix/ or a Hugging Face id. Kept when already there.
    Exit 0 done, 2 bad reference, 69 storage, registry or Hub unreachable.
    """
    from bigbertha.serving import basemodel

    settings = ctx.obj.settings()
    path = basemodel.fetch(settings)
    typer.echo(json.dumps({"model_dir": str(path), "ref": basemodel.served_base(settings)}))


@app.command("serve-adapters")
def serve_adapters_command(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="One sync pass, print it as JSON, and exit.")
    ] = False,
) -> None:
    """Keep the vLLM server's LoRA adapters in step with the registry aliases (the sidecar).

    Loads champion, challenger and previous by their served names, unloads what no alias points
    at, and rolls the tier for a merged champion. Serves /healthz, /readyz, /status and vLLM's
    /metrics on serving.status_port until SIGTERM. With --once: exit 0 synced, 69 vLLM or the
    registry unreachable, 2 vLLM's runtime-LoRA API is off or refuses the key.
    """
    from bigbertha.serving import sidecar

    settings = ctx.obj.settings()
    if once:
        report = sidecar.build(settings).sync.sync_once()
        typer.echo(json.dumps(report.to_json()))
        return
    sidecar.serve(settings)
