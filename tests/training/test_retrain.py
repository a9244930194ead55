"""retrain: the Workflow's exit handler, no pipeline of its own, and faults of the DAG's steps
(MLflow down, a killed finetune) that leave nothing half-done."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.errors import ExitCode
from bigbertha.models import registry
from bigbertha.training import retrain
from tests.models.helpers import mlflow_settings
from tests.services import free_port
from tests.training.helpers import bigbertha_process, retrain_counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the cluster Workflow's exit handler ------------------------------------------------------


def test_record_exit_counts_the_run_and_records_why_it_failed(
    mlflow_server: Any, redis_server: Any
) -> None:
    """`retrain --record-exit` (the WorkflowTemplate's onExit) counts and explains a failure."""
    from mlflow import MlflowClient

    settings = mlflow_settings(mlflow_server, redis={"url": redis_server.extra["url"]})
    before = retrain_counts(redis_server.extra["url"])
    failures = json.dumps(
        [{"displayName": "finetune", "message": "OOMKilled", "templateName": "finetune"}]
    )
    workflow = f"bigbertha-retrain-{time.time_ns()}"
    lineage = {"workflow_name": workflow, "alert_name": "BigBerthaNegativeFeedbackHigh"}
    assert retrain.record_exit(settings, "Failed", failures, lineage) == "failed"
    assert retrain.record_exit(settings, "Succeeded", "[]", {}) == "succeeded"
    after = retrain_counts(redis_server.extra["url"])
    assert after.get("failed", 0) == before.get("failed", 0) + 1
    assert after.get("succeeded", 0) == before.get("succeeded", 0) + 1
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.workflow_name = '{workflow}'",
    )
    assert len(runs) == 1
    assert runs[0].data.tags["failed_step"] == "finetune"
    assert "OOMKilled" in runs[0].data.tags["failure_reason"]
    assert runs[0].info.status == "FAILED"
    # The exit handler never creates or moves a champion.
    assert registry.alias_version(settings, registry.CHAMPION) is None


def test_record_exit_cli_needs_a_status() -> None:
    result = CliRunner().invoke(app, ["retrain", "--record-exit"])
    assert result.exit_code == 2 and "--status" in result.output


def test_retrain_runs_no_pipeline_of_its_own() -> None:
    """One definition of the pipeline: the WorkflowTemplate's DAG (the demo's gateway runs it)."""
    result = CliRunner().invoke(app, ["retrain"])
    assert result.exit_code == 2
    assert "give --check (the DAG's first step) or --record-exit" in result.output
    assert "WorkflowTemplate" in result.output


# --- faults: MLflow down, a killed run (real processes) -------------------------------------

MLFLOW_BOUND_SECONDS = 60  # "well under a minute" with the default mlflow.request_* settings


def test_promote_fails_fast_with_69_when_mlflow_is_down(
    task_data: Path,
    clean_env: Path,
) -> None:
    """With MLflow's client defaults this took ~250 s; the settings bound it to seconds."""
    adapter = clean_env / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "smollm2"}')
    args = ["promote", "--challenger", str(adapter), "--data", str(task_data)]
    env = {"BIGBERTHA_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing there
    started = time.monotonic()
    process = bigbertha_process(args, env, clean_env)
    try:
        output, _ = process.communicate(timeout=MLFLOW_BOUND_SECONDS + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    elapsed = time.monotonic() - started
    assert process.returncode == ExitCode.UNAVAILABLE, output[-3000:]
    assert elapsed < MLFLOW_BOUND_SECONDS, f"promote took {elapsed:.0f}s with MLflow down"
    assert "MLflow at http://127.0.0.1" in output.splitlines()[-1]


def _runs(tracking_uri: str, experiment: str = registry.EXPERIMENT, **tags: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(client.search_runs([found.experiment_id], filter_string=where))


@pytest.mark.slow
def test_a_killed_finetune_leaves_no_running_mlflow_run_after_the_exit_handler(
    mlflow_server: Any,
    redis_server: Any,
    tiny_model: Path,
    task_data: Path,
    clean_env: Path,
) -> None:
    """SIGTERM: the finetune step ends its MLflow run FAILED itself (exit 143). SIGKILL: it
    cannot, and the Workflow's exit handler (`retrain --record-exit`) marks the run it left
    RUNNING as FAILED, with the reason."""
    from bigbertha.models import tracking

    uri = mlflow_server.url
    env = {
        "BIGBERTHA_MLFLOW__TRACKING_URI": uri,
        "BIGBERTHA_REDIS__URL": redis_server.extra["url"],
        "BIGBERTHA_FINETUNE__BASE_MODEL": str(tiny_model),
        "BIGBERTHA_FINETUNE__QUANTIZE": "none",
        "BIGBERTHA_FINETUNE__MIN_EXAMPLES": "8",
        "BIGBERTHA_FINETUNE__MAX_STEPS": "100000",  # it is killed long before
        "BIGBERTHA_FINETUNE__BATCH_SIZE": "2",
    }

    def start_and_wait_for_its_run(workflow: str) -> tuple[subprocess.Popen[str], Any]:
        args = ["finetune", "--data", str(task_data), "--output", str(clean_env / workflow)]
        process = bigbertha_process([*args, "--workflow-name", workflow], env, clean_env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            running = [
                r
                for r in _runs(uri, workflow_name=workflow, step="finetune")
                if r.info.status == "RUNNING"
            ]
            if running:
                assert running[0].data.tags[tracking.PID_TAG] == str(process.pid)
                return process, running[0]
            time.sleep(0.5)
        process.kill()
        pytest.fail(f"no RUNNING finetune run appeared:\n{process.communicate()[0][-3000:]}")

    # SIGTERM (Kubernetes' deadline or a deleted pod): cleanup runs, exit 143.
    process, run = start_and_wait_for_its_run("wf-sigterm")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == ExitCode.TERMINATED, output[-3000:]
    assert "interrupted by SIGTERM" in output
    assert _runs(uri, workflow_name="wf-sigterm", step="finetune")[0].info.status == "FAILED"

    # SIGKILL (OOM killer, node loss): the run stays RUNNING ...
    process, run = start_and_wait_for_its_run("wf-sigkill")
    process.kill()
    process.wait(timeout=60)
    assert _runs(uri, workflow_name="wf-sigkill", step="finetune")[0].info.status == "RUNNING"
    # ... until the Workflow's exit handler runs, as the WorkflowTemplate's onExit calls it.
    failures = json.dumps([{"displayName": "finetune", "message": "OOMKilled"}])
    handler = bigbertha_process(
        [
            "retrain",
            "--record-exit",
            "--status",
            "Failed",
            "--failures",
            failures,
            "--workflow-name",
            "wf-sigkill",
        ],
        env,
        clean_env,
    )
    output, _ = handler.communicate(timeout=300)
    assert handler.returncode == 0, output[-3000:]
    swept = _runs(uri, workflow_name="wf-sigkill", step="finetune")[0]
    assert swept.info.status == "FAILED"
    assert "its workflow wf-sigkill has ended" in swept.data.tags["failure_reason"]
    for workflow in ("wf-sigterm", "wf-sigkill"):
        assert all(r.info.status != "RUNNING" for r in _runs(uri, workflow_name=workflow))
