"""MLflow run hygiene against a real server: bounded client retries, owners, the stale sweep."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from bigbertha.core.settings import Settings
from bigbertha.models import tracking


def test_client_retries_come_from_the_settings(monkeypatch: Any) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # settings win over the env
    settings = Settings(mlflow={"request_retries": 1, "request_timeout_seconds": 3})
    tracking.bound_client_retries(settings)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    for name in ("MAX_RETRIES", "TIMEOUT", "BACKOFF_FACTOR", "BACKOFF_JITTER"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}")


def run_left_running_by_a_dead_process(tracking_uri: str, experiment_id: str) -> tuple[str, int]:
    """A real process starts a run with owner tags and exits without ending it."""
    code = (
        "import os, sys\n"
        "from mlflow import MlflowClient\n"
        "from bigbertha.models import tracking\n"
        "run = MlflowClient(sys.argv[1]).create_run(sys.argv[2], tags=tracking.owner_tags())\n"
        "print(run.info.run_id, os.getpid())\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tracking_uri, experiment_id],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    return out[-2], int(out[-1])


def test_sweep_fails_only_runs_no_live_job_can_own(mlflow_server: Any) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment = f"sweep-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(experiment)
    now_ms = int(time.time() * 1000)
    me = tracking.owner_tags()

    dead, dead_pid = run_left_running_by_a_dead_process(mlflow_server.url, exp_id)
    alive = client.create_run(exp_id, tags=me).info.run_id  # this process: still at work
    reused = client.create_run(exp_id, tags={**me, tracking.PID_STARTED_TAG: "12.00"})
    elsewhere = client.create_run(exp_id, tags={tracking.HOST_TAG: "pod-a", tracking.PID_TAG: "1"})
    too_old = client.create_run(
        exp_id, start_time=now_ms - 2 * 3600 * 1000, tags={tracking.HOST_TAG: "pod-b"}
    )
    untagged_old = client.create_run(exp_id, start_time=now_ms - 2 * 3600 * 1000)
    of_ended_workflow = client.create_run(
        exp_id, tags={tracking.HOST_TAG: "pod-c", "workflow_name": "wf-ended"}
    )
    finished = client.create_run(exp_id, tags={tracking.HOST_TAG: socket.gethostname()})
    client.set_terminated(finished.info.run_id, "FINISHED")

    swept = tracking.sweep_stale_runs(client, experiment, stale_after=3600)
    expected = {dead, reused.info.run_id, too_old.info.run_id, untagged_old.info.run_id}
    assert set(swept) == expected
    for run_id in expected:
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags[tracking.FAILURE_TAG].startswith("left RUNNING by a job")
    assert (
        f"its process {dead_pid} on {socket.gethostname()} is gone"
        in client.get_run(dead).data.tags[tracking.FAILURE_TAG]
    )
    assert (
        "longer than any job may run"
        in client.get_run(too_old.info.run_id).data.tags[tracking.FAILURE_TAG]
    )
    for run_id in (alive, elsewhere.info.run_id, of_ended_workflow.info.run_id):
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"

    # The exit handler of wf-ended knows it is over: its runs are closed too.
    assert tracking.sweep_stale_runs(
        client, experiment, stale_after=3600, ended_workflow="wf-ended"
    ) == [of_ended_workflow.info.run_id]
    assert (
        "its workflow wf-ended has ended"
        in client.get_run(of_ended_workflow.info.run_id).data.tags[tracking.FAILURE_TAG]
    )
    assert tracking.sweep_stale_runs(client, f"missing-{experiment}", stale_after=1) == []
    client.set_terminated(alive, "FINISHED")
