"""The WorkflowTemplates: the retraining DAG and the ingestion job run `bigbertha <subcommand>`
steps that parse against the real CLI, with locks, retries, deadlines, GC and placement from
values."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.exceptions import TyperException

from bigbertha.cli import app
from tests.chart.render import PLACEHOLDERS, find, one, render, render_env, workflow_containers


def _steps() -> list[tuple[str, list[str]]]:
    return [
        (name, [*tpl["container"]["command"], *tpl["container"]["args"]])
        for name, tpl in workflow_containers(render_env("default"))
    ]


def _fill(arg: str) -> str:
    return re.sub(r"\{\{([^}]+)\}\}", lambda m: PLACEHOLDERS[m[1]], arg)


def _cases() -> list[Any]:
    return [pytest.param(step, argv, id=step) for step, argv in _steps()]


@pytest.mark.parametrize(("step", "argv"), _cases())
def test_every_step_command_parses_with_the_real_cli(step: str, argv: list[str]) -> None:
    assert argv[0] == "bigbertha", f"{step}: every container runs `bigbertha <subcommand>`"
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    name, *rest = [_fill(a) for a in argv[1:]]
    command = commands.get(name)
    # An unregistered subcommand is the failure this test exists to catch: never a skip.
    assert command is not None, f"{step}: `bigbertha {name}` is not a registered subcommand"
    try:
        command.make_context(name, list(rest))
    except TyperException as exc:
        pytest.fail(f"{step}: `bigbertha {name} {' '.join(rest)}` does not parse: {exc}")


def test_every_input_parameter_is_declared(docs: list[dict[str, Any]]) -> None:
    for wt in find(docs, "WorkflowTemplate"):
        templates = {t["name"]: t for t in wt["spec"]["templates"]}
        for tpl in templates.values():
            declared = {p["name"] for p in tpl.get("inputs", {}).get("parameters", [])}
            used = set(re.findall(r"\{\{inputs\.parameters\.([\w-]+)\}\}", str(tpl)))
            assert used <= declared, f"{tpl['name']}: undeclared {used - declared}"
            for task in tpl.get("dag", {}).get("tasks", []):
                needed = {p["name"] for p in templates[task["template"]]["inputs"]["parameters"]}
                given = {p["name"] for p in task["arguments"]["parameters"]}
                assert needed == given, f"{task['name']}: passes {given}, needs {needed}"
        entry = templates[wt["spec"]["entrypoint"]]
        args = {p["name"] for p in wt["spec"]["arguments"]["parameters"]}
        used = set(re.findall(r"\{\{workflow\.parameters\.([\w-]+)\}\}", str(wt["spec"])))
        assert used <= args, f"undeclared workflow parameters {used - args}"
        assert {p["name"] for p in entry.get("inputs", {}).get("parameters", [])} <= args


def test_retraining_dag_runs_prepare_finetune_evaluate_promote(docs: list[dict[str, Any]]) -> None:
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    tasks = {
        t["name"]: t
        for t in next(t for t in wt["templates"] if t["name"] == wt["entrypoint"])["dag"]["tasks"]
    }
    # A check first; each step only after the one before Succeeded (a bare name would also
    # follow a Skipped one: Argo's `depends` default).
    assert tasks["check"].get("depends") is None
    assert tasks["prepare-data"]["depends"] == "check.Succeeded"
    assert tasks["finetune"]["depends"] == "prepare-data.Succeeded"
    assert tasks["evaluate"]["depends"] == "finetune.Succeeded"
    assert tasks["promote"]["depends"] == "evaluate.Succeeded"
    commands = {t["name"]: t["container"]["args"][0] for t in wt["templates"] if "container" in t}
    assert commands["finetune"] == "finetune" and commands["promote"] == "promote"
    assert commands["evaluate"] == "evaluate"


def test_retraining_holds_a_mutex_retries_has_a_deadline_gc_and_exit_handler(
    docs: list[dict[str, Any]],
) -> None:
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    assert wt["synchronization"] == {"mutexes": [{"name": "bigbertha-finetune"}]}
    assert wt["activeDeadlineSeconds"] > 0
    assert wt["podGC"]["strategy"] and wt["ttlStrategy"]["secondsAfterCompletion"] > 0
    handler = next(t for t in wt["templates"] if t["name"] == wt["onExit"])
    assert "{{workflow.status}}" in handler["container"]["args"]
    for tpl in wt["templates"]:
        if "container" in tpl and tpl["name"] != wt["onExit"]:
            retry = tpl["retryStrategy"]
            assert retry["limit"] >= 1 and retry["backoff"]["duration"], tpl["name"]


def test_ingestion_is_bounded_retried_and_takes_the_raw_key(docs: list[dict[str, Any]]) -> None:
    wt = one(docs, "WorkflowTemplate", "bigbertha-ingest")["spec"]
    (semaphore,) = wt["synchronization"]["semaphores"]
    sync = one(docs, "ConfigMap", semaphore["configMapKeyRef"]["name"])
    assert int(sync["data"][semaphore["configMapKeyRef"]["key"]]) >= 1
    (step,) = [t for t in wt["templates"] if "container" in t]
    args = step["container"]["args"]
    assert args[0] == "ingest"
    assert "s3://{{inputs.parameters.bucket}}/{{inputs.parameters.key}}" in args
    assert args[args.index("--event-name") + 1] == "{{inputs.parameters.event-name}}"
    assert args[args.index("--key-encoding") + 1] == "raw"
    assert wt["activeDeadlineSeconds"] > 0


def test_backfill_lists_fans_out_under_its_cap_and_fans_in() -> None:
    docs = render({"workflows": {"backfill": {"batchSize": 250, "parallelism": 3}}})
    wt = one(docs, "WorkflowTemplate", "bigbertha-ingest-backfill")["spec"]
    assert wt["parallelism"] == 3
    params = {p["name"]: p["value"] for p in wt["arguments"]["parameters"]}
    assert params == {"prefix": "s3://documents/", "batch-size": "250"}
    templates = {t["name"]: t for t in wt["templates"]}
    plan, fan_out, fan_in = templates[wt["entrypoint"]]["dag"]["tasks"]
    assert fan_out["withParam"] == "{{tasks.plan.outputs.parameters.batches}}"
    assert fan_out["depends"] == "plan.Succeeded" and fan_in["depends"] == "ingest.Succeeded"
    assert fan_out["arguments"]["parameters"] == [{"name": "batch", "value": "{{item}}"}]
    summaries = fan_in["arguments"]["parameters"][0]["value"]
    assert summaries == "{{tasks.ingest.outputs.parameters.summary}}"
    # Each step writes its output parameter where Argo reads it.
    for name, param, flag in (
        ("plan", "batches", "--plan-out"),
        ("ingest", "summary", "--summary"),
    ):
        args = templates[name]["container"]["args"]
        (output,) = templates[name]["outputs"]["parameters"]
        assert output["name"] == param and output["valueFrom"]["path"].startswith("/tmp/")
        assert args[args.index(flag) + 1] == f"{{{{outputs.parameters.{param}.path}}}}"
        assert templates[name]["retryStrategy"]["limit"] >= 1
    assert templates["report"]["container"]["args"][:2] == ["ingest", "--merge"]
    # The batch pods are ingestion pods: the ingest image, resources and network wiring.
    ingest = one(docs, "WorkflowTemplate", "bigbertha-ingest")["spec"]
    step = next(t for t in ingest["templates"] if "container" in t)
    assert templates["ingest"]["container"]["image"] == step["container"]["image"]
    assert templates["ingest"]["container"]["resources"] == step["container"]["resources"]
    assert wt["podMetadata"]["labels"] == ingest["podMetadata"]["labels"]


def test_values_drive_deadlines_parallelism_and_retries() -> None:
    docs = render(
        {
            "workflows": {
                "ingest": {"parallelism": 7, "activeDeadlineSeconds": 600, "retry": {"limit": 5}},
                "finetune": {"activeDeadlineSeconds": 900},
            }
        }
    )
    ingest = one(docs, "WorkflowTemplate", "bigbertha-ingest")["spec"]
    assert ingest["activeDeadlineSeconds"] == 600
    assert ingest["templates"][0]["retryStrategy"]["limit"] == 5
    assert one(docs, "ConfigMap", "bigbertha-workflows-sync")["data"]["ingest"] == "7"
    assert (
        one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]["activeDeadlineSeconds"] == 900
    )


def _template(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    return next(t for t in wt["templates"] if t["name"] == name)


def test_prod_fine_tunes_on_gpu_nodes(prod_docs: list[dict[str, Any]]) -> None:
    train = _template(prod_docs, "finetune")
    assert train["container"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert train["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    prepare = _template(prod_docs, "prepare-data")
    assert "nodeSelector" not in prepare, "only the training step needs a GPU node"


def test_dev_fine_tunes_on_cpu() -> None:
    train = _template(render_env("dev"), "finetune")
    assert "nvidia.com/gpu" not in str(train["container"]["resources"])
    assert "nodeSelector" not in train and "tolerations" not in train


@pytest.mark.parametrize("env", ["default", "prod"])
def test_every_step_retries_exactly_the_transient_exit_code(env: str) -> None:
    """The rendered retry expressions, evaluated as Argo would, match the exit-code contract:
    pod errors and 69 are retried; configuration, input, bug and busy codes are final."""
    from bigbertha.core.errors import ExitCode
    from bigbertha.local.gateway import retry_wanted

    steps = [
        (wt["metadata"]["name"], tpl)
        for wt in find(render_env(env), "WorkflowTemplate")
        for tpl in wt["spec"]["templates"]
        if "retryStrategy" in tpl
    ]
    assert {name for name, _ in steps} == {
        "bigbertha-finetune",
        "bigbertha-ingest",
        "bigbertha-ingest-backfill",
    }
    for name, tpl in steps:
        expression = tpl["retryStrategy"]["expression"]
        retried = {code for code in [*ExitCode, 1] if retry_wanted(expression, "Failed", code)}
        assert retried == {ExitCode.UNAVAILABLE}, (name, tpl["name"], expression)
        assert retry_wanted(expression, "Error", 137), (name, tpl["name"])  # evicted pod


def test_the_check_step_decides_before_anything_trains(docs: list[dict[str, Any]]) -> None:
    """The DAG's first step asks MLflow (training/cooldown.py) and writes train or skip to its
    output parameter; prepare-data runs only on train, so a skipped run ends Succeeded."""
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    templates = {t["name"]: t for t in wt["templates"]}
    tasks = {t["name"]: t for t in templates[wt["entrypoint"]]["dag"]["tasks"]}
    assert tasks["prepare-data"]["when"] == "{{tasks.check.outputs.parameters.decision}} == train"
    check = templates["check"]
    (output,) = check["outputs"]["parameters"]
    assert output["name"] == "decision" and output["valueFrom"]["path"].startswith("/tmp/")
    args = check["container"]["args"]
    assert args[:2] == ["retrain", "--check"]
    assert args[args.index("--decision-file") + 1] == "{{outputs.parameters.decision.path}}"
    assert args[args.index("--alert-episode") + 1] == "{{inputs.parameters.alert-episode}}"
    assert args[args.index("--workflow-name") + 1] == "{{workflow.name}}"
    assert "alert-episode" in {p["name"] for p in wt["arguments"]["parameters"]}


def test_the_cooldown_comes_from_events_retrain_cooldown_seconds() -> None:
    settings = one(
        render({"events": {"retrain": {"cooldownSeconds": 5400}}}),
        "ConfigMap",
        "bigbertha-settings",
    )
    assert settings["data"]["BIGBERTHA_RETRAIN__COOLDOWN_SECONDS"] == "5400"


def test_the_gate_steps_judge_on_the_golden_set_and_the_held_out_turns_with_milvus(
    docs: list[dict[str, Any]],
) -> None:
    """evaluate and promote read the turns prepare-data held out, and reach the golden set and
    Milvus (they retrieve as the chatbot does) through the settings ConfigMap."""
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    steps = {t["name"]: t["container"] for t in wt["templates"] if "container" in t}
    prepare = steps["prepare-data"]["args"]
    held_out = prepare[prepare.index("--eval-output") + 1]
    for name in ("evaluate", "promote"):
        args = steps[name]["args"]
        assert args[args.index("--data") + 1] == held_out, name
        (source,) = steps[name]["envFrom"]
        settings = one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        assert settings["BIGBERTHA_EVALUATE__GOLDEN"].startswith("s3://"), name
        assert settings["BIGBERTHA_MILVUS__URI"].startswith("http://"), name
