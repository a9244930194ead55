"""retrain: alert payloads -> plans, one run at a time, and failures that keep the champion."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.errors import ExitCode, InputError
from bigbertha.core.settings import Settings
from bigbertha.models import registry
from bigbertha.models.loading import pyfunc_model
from bigbertha.training import finetune, retrain
from tests.models.helpers import mlflow_settings
from tests.services import free_port
from tests.training.helpers import retrain_counts, train_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample(shared_dir: Path, name: str) -> Any:
    return json.loads((shared_dir / "samples" / name).read_text())


# --- alert payloads -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alertmanager-webhook-firing.json", "argo-webhook-eventdata-firing.json"]
)
def test_firing_retrain_alert_starts_a_run_with_its_name_and_labels(
    shared_dir: Path, name: str
) -> None:
    plan = retrain.plan_from_alert(sample(shared_dir, name), model_name="bigbertha-llm")
    assert plan is not None
    assert plan.alert_name == "BigBerthaNegativeFeedbackHigh"
    assert plan.alerts == ["BigBerthaNegativeFeedbackHigh"]  # the page-only alert is not one
    assert plan.alert_labels["bigbertha_action"] == "retrain"
    assert plan.alert_labels["model_version"] == "v14"
    assert plan.fingerprint == "a5626009deddaacb"
    assert json.loads(plan.lineage()["alert_labels"]) == plan.alert_labels


def test_resolved_page_only_and_foreign_alerts_start_nothing(shared_dir: Path) -> None:
    resolved = sample(shared_dir, "alertmanager-webhook-resolved.json")
    assert retrain.plan_from_alert(resolved, model_name="bigbertha-llm") is None
    page_only = sample(shared_dir, "alertmanager-webhook-firing.json")
    page_only["alerts"] = [
        a for a in page_only["alerts"] if a["labels"]["bigbertha_action"] == "page"
    ]
    assert page_only["status"] == "firing"  # the group fires, but nothing asks for a retrain
    assert retrain.plan_from_alert(page_only, model_name="bigbertha-llm") is None
    other_model = sample(shared_dir, "alertmanager-webhook-firing.json")
    assert retrain.plan_from_alert(other_model, model_name="another-llm") is None
    argo = sample(shared_dir, "argo-webhook-eventdata-firing.json")
    argo_resolved = copy.deepcopy(argo)
    for alert in argo_resolved["body"]["alerts"]:
        alert["status"] = "resolved"
    assert retrain.plan_from_alert(argo_resolved) is None
    with pytest.raises(InputError, match="not an Alertmanager webhook message"):
        retrain.plan_from_alert({"header": {}, "body": {"hello": 1}})


def test_cli_skips_a_resolved_payload_and_rejects_a_broken_one(
    shared_dir: Path, clean_env: Path
) -> None:
    runner = CliRunner()
    resolved = shared_dir / "samples" / "alertmanager-webhook-resolved.json"
    result = runner.invoke(app, ["retrain", "--alert-payload", str(resolved)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["result"] == "skipped"
    (clean_env / "broken.json").write_text("{")
    result = runner.invoke(app, ["retrain", "--alert-payload", str(clean_env / "broken.json")])
    assert result.exit_code == InputError.exit_code
    assert "alert payload" in result.output and "not JSON" in result.output


# --- whole runs -------------------------------------------------------------------------------


@pytest.fixture
def run_settings(
    mlflow_server: Any,
    redis_server: Any,
    tiny_model: Path,
    task_data: Path,
    tmp_path: Path,
    clean_env: Path,
) -> Settings:
    base = train_settings(mlflow_server, tiny_model, task_data, tmp_path / "unused", max_steps=3)
    return base.model_copy(
        update={
            "redis": base.redis.model_copy(update={"url": SecretStr(redis_server.extra["url"])}),
            "evaluate": base.evaluate.model_copy(update={"max_examples": 2, "max_new_tokens": 2}),
            "retrain": base.retrain.model_copy(
                update={"workdir": str(tmp_path / "runs"), "lock_file": str(tmp_path / "lock")}
            ),
        }
    )


@pytest.mark.slow
def test_second_run_refuses_while_the_first_holds_the_lock(
    run_settings: Settings, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = retrain_counts(redis_server.extra["url"])
    for key, value in {
        "MLFLOW__TRACKING_URI": run_settings.mlflow.tracking_uri,
        "REDIS__URL": redis_server.extra["url"],
        "RETRAIN__LOCK_FILE": run_settings.retrain.lock_file,
        "EVALUATE__DATA": str(run_settings.evaluate.data),
    }.items():
        monkeypatch.setenv(f"BIGBERTHA_{key}", value)
    with retrain.training_lock(Path(run_settings.retrain.lock_file), 0):
        result = CliRunner().invoke(app, ["retrain", "--report", "report.json"])
    assert result.exit_code == retrain.RetrainBusy.exit_code, result.output
    assert "another retrain run" in result.output
    assert json.loads(Path("report.json").read_text())["result"] == "skipped"
    after = retrain_counts(redis_server.extra["url"])
    assert after.get("skipped", 0) == before.get("skipped", 0) + 1


@pytest.mark.slow
def test_two_runs_started_together_never_train_at_the_same_time(
    run_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    intervals: list[tuple[float, float]] = []
    real_run = finetune.run

    def timed_run(*args: Any, **kwargs: Any) -> finetune.FinetuneResult:
        start = time.monotonic()
        try:
            return real_run(*args, **kwargs)
        finally:
            intervals.append((start, time.monotonic()))

    monkeypatch.setattr(finetune, "run", timed_run)
    waiting = run_settings.model_copy(
        update={"retrain": run_settings.retrain.model_copy(update={"lock_wait_seconds": 600})}
    )
    results: list[Any] = []

    def one() -> None:
        try:
            results.append(retrain.run(waiting, workflow_name="wf-x"))
        except Exception as exc:  # the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert [getattr(r, "result", r) for r in results] == ["succeeded", "succeeded"]
    (a_start, a_end), (b_start, b_end) = sorted(intervals)
    assert a_end <= b_start, "the second run trained while the first was training"


@pytest.mark.slow
def test_a_crash_mid_training_leaves_the_champion_and_records_why(
    run_settings: Settings,
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    redis_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient
    from transformers import Trainer

    champion = registry.register_challenger(
        run_settings, trained_adapter[0], {"base_model": "x"}, pyfunc_model()
    )
    registry.promote(run_settings, champion)
    before = retrain_counts(redis_server.extra["url"])
    real_step = Trainer.training_step
    calls = []

    def crashing_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crashing_step)
    plan = retrain.RetrainPlan("BigBerthaNegativeFeedbackHigh", {"bigbertha_action": "retrain"})
    report = tmp_path / "retrain.json"
    with pytest.raises(retrain.RetrainFailed, match="finetune failed: CUDA out of memory"):
        retrain.run(run_settings, plan=plan, report=str(report))

    assert len(calls) == 2  # it did crash mid-training
    assert registry.alias_version(run_settings, "champion") == champion
    doc = json.loads(report.read_text())
    assert (doc["result"], doc["step"]) == ("failed", "finetune")
    after = retrain_counts(redis_server.extra["url"])
    assert after.get("failed", 0) == before.get("failed", 0) + 1
    runs = MlflowClient(run_settings.mlflow.tracking_uri).search_runs(
        [
            e.experiment_id
            for e in MlflowClient(run_settings.mlflow.tracking_uri).search_experiments()
        ],
        filter_string="tags.failed_step = 'finetune'",
    )
    assert any("CUDA out of memory" in r.data.tags["failure_reason"] for r in runs)
    # Nothing was registered for the failed run: the only version is the champion.
    versions = MlflowClient(run_settings.mlflow.tracking_uri).search_model_versions(
        f"name = '{run_settings.mlflow.model_name}'"
    )
    assert [v.version for v in versions] == [champion]


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


# --- faults: MLflow down, a killed run (real processes) -------------------------------------

MLFLOW_BOUND_SECONDS = 60  # "well under a minute" with the default mlflow.request_* settings


def bigbertha_process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`bigbertha <args>` as its own process, with only these BIGBERTHA_* settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BIGBERTHA_", "MLFLOW_HTTP_")) or k == "BIGBERTHA_SHARED"
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bigbertha", *args],
        env={**clean, "BIGBERTHA_LOG__FORMAT": "json", **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("command", ["promote", "retrain"])
def test_promote_and_retrain_fail_fast_with_69_when_mlflow_is_down(
    command: str,
    task_data: Path,
    clean_env: Path,
) -> None:
    """With MLflow's client defaults this took ~250 s; the settings bound it to seconds."""
    adapter = clean_env / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "smollm2"}')
    args = {
        "promote": ["promote", "--challenger", str(adapter), "--data", str(task_data)],
        "retrain": ["retrain", "--data", str(task_data), "--eval-data", str(task_data)],
    }[command]
    env = {
        "BIGBERTHA_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing there
        "BIGBERTHA_RETRAIN__WORKDIR": str(clean_env / "runs"),
        "BIGBERTHA_RETRAIN__LOCK_FILE": str(clean_env / "lock"),
    }
    started = time.monotonic()
    process = bigbertha_process(args, env, clean_env)
    try:
        output, _ = process.communicate(timeout=MLFLOW_BOUND_SECONDS + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    elapsed = time.monotonic() - started
    assert process.returncode == ExitCode.UNAVAILABLE, output[-3000:]
    assert elapsed < MLFLOW_BOUND_SECONDS, f"{command} took {elapsed:.0f}s with MLflow down"
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
def test_a_killed_retrain_leaves_no_running_mlflow_run_after_the_next_start(
    run_settings: Settings,
    task_data: Path,
    clean_env: Path,
) -> None:
    """SIGTERM: the run ends its MLflow run FAILED itself (exit 143). SIGKILL: it cannot, and
    the next retrain's start marks the run it left RUNNING as FAILED, with the reason."""
    from bigbertha.models import tracking

    uri = run_settings.mlflow.tracking_uri
    env = {
        "BIGBERTHA_MLFLOW__TRACKING_URI": uri,
        "BIGBERTHA_MLFLOW__MODEL_NAME": run_settings.mlflow.model_name,
        "BIGBERTHA_FINETUNE__BASE_MODEL": run_settings.finetune.base_model,
        "BIGBERTHA_FINETUNE__QUANTIZE": "none",
        "BIGBERTHA_FINETUNE__MIN_EXAMPLES": "8",
        "BIGBERTHA_FINETUNE__FEEDBACK_EXAMPLES": "0",
        "BIGBERTHA_FINETUNE__MAX_STEPS": "100000",  # it is killed long before
        "BIGBERTHA_FINETUNE__BATCH_SIZE": "2",
        "BIGBERTHA_RETRAIN__WORKDIR": str(clean_env / "runs"),
        "BIGBERTHA_RETRAIN__LOCK_FILE": str(clean_env / "lock"),
    }
    args = ["retrain", "--data", str(task_data), "--eval-data", str(task_data)]

    def start_and_wait_for_its_run(workflow: str) -> tuple[subprocess.Popen[str], Any]:
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
    # ... until the next retrain starts (this one stops early: too few examples).
    nxt = bigbertha_process(
        [*args, "--workflow-name", "wf-next"],
        {**env, "BIGBERTHA_FINETUNE__MIN_EXAMPLES": "100000"},
        clean_env,
    )
    output, _ = nxt.communicate(timeout=300)
    assert nxt.returncode == ExitCode.INPUT, output[-3000:]
    swept = _runs(uri, workflow_name="wf-sigkill", step="finetune")[0]
    assert swept.info.status == "FAILED"
    assert f"its process {process.pid}" in swept.data.tags["failure_reason"]
    assert "is gone" in swept.data.tags["failure_reason"]
    for workflow in ("wf-sigterm", "wf-sigkill", "wf-next"):
        assert all(r.info.status != "RUNNING" for r in _runs(uri, workflow_name=workflow))
