"""MLflow runs that never outlive their job: bounded client retries, owners, and a sweep.

- `bound_client_retries(settings)`: MLflow's client retries a request 7 times with backoff
  factor 2 and a 120 s timeout by default, so a job against a server that is down hangs about
  250 s before it fails. Every job sets MLflow's own variables (``MLFLOW_HTTP_REQUEST_*``) from
  ``mlflow.request_*`` instead: it fails within seconds with exit code 69, and the workflow's
  retry policy, not the client, decides when to try again.
- `owner_tags()`: every run a job starts (and every challenger the gate registers) records who
  started it: host, pid and the process's start time (a reused pid is not the same process).
- `sweep_stale_runs(settings)`: a job killed by SIGKILL, an OOM or a node loss leaves its run
  RUNNING for ever. The next retrain marks such runs of the ``bigbertha-retrain`` experiment
  FAILED with the reason (tag ``failure_reason``), but only when no job can still own them
  (`abandoned`): their process on this host is gone, their Workflow has ended, or they have been
  RUNNING longer than ``retrain.stale_after_seconds`` (the Workflow deadline). A job running
  elsewhere right now is never touched.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

HOST_TAG = "bigbertha.host"
PID_TAG = "bigbertha.pid"
PID_STARTED_TAG = "bigbertha.pid_started"  # the process's start time (epoch seconds)
FAILURE_TAG = "failure_reason"
_PID_START_TOLERANCE = 1.0  # seconds: psutil's create_time is rounded to clock ticks


def bound_client_retries(settings: Settings) -> None:
    """Set MLflow's HTTP client retries, backoff and timeout from ``mlflow.request_*``.

    Overrides what the environment held: the settings are the one place these are configured.
    MLflow reads the variables on every request (``mlflow.utils.request_utils``), so this takes
    effect for clients already created.
    """
    m = settings.mlflow
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(m.request_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(m.request_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(m.request_timeout_seconds)


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0  # alive, start unknown


def owner_tags() -> dict[str, str]:
    """Who is starting a run or registering a version: this host, pid and process start."""
    started = _process_started(os.getpid()) or 0.0
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PID_STARTED_TAG: f"{started:.2f}",
    }


def _owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that owns `tags` still runs; None when it is not on this host."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        pid = int(tags.get(PID_TAG, ""))
        recorded = float(tags.get(PID_STARTED_TAG) or 0)
    except ValueError:
        return None
    started = _process_started(pid)
    if started is None:
        return False
    # A pid reused by another process after the owner died is not the owner.
    return not (recorded and started and abs(started - recorded) > _PID_START_TOLERANCE)


def abandoned(
    tags: Mapping[str, str],
    started_ms: int | None,
    *,
    stale_after: float,
    ended_workflow: str | None = None,
    now: float | None = None,
) -> str | None:
    """Why a RUNNING run (or an ungated version) can have no live owner, or None if it may.

    `ended_workflow`: a Workflow known to be over (its exit handler is running), so nothing
    tagged with its name can still be at work.
    """
    if ended_workflow and tags.get("workflow_name") == ended_workflow:
        return f"its workflow {ended_workflow} has ended"
    if _owner_alive(tags) is False:
        return f"its process {tags.get(PID_TAG)} on {tags.get(HOST_TAG)} is gone"
    if started_ms is not None:
        age = (now or time.time()) - started_ms / 1000
        if age > stale_after:
            return (
                f"started {age / 3600:.1f} h ago, longer than any job may run "
                f"(retrain.stale_after_seconds = {stale_after:g})"
            )
    return None


def sweep_stale_runs(
    mlflow_client: Any,
    experiment: str,
    *,
    stale_after: float,
    ended_workflow: str | None = None,
) -> list[str]:
    """Mark the abandoned RUNNING runs of `experiment` FAILED with the reason; their ids.

    Callers wrap it in `registry.mlflow_errors`: MLflow unreachable is exit 69 before any work.
    """
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = mlflow_client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    swept = []
    for run in runs:
        why = abandoned(
            run.data.tags,
            run.info.start_time,
            stale_after=stale_after,
            ended_workflow=ended_workflow,
        )
        if why is not None:
            _fail(mlflow_client, run, f"left RUNNING by a job that did not end it: {why}")
            swept.append(run.info.run_id)
    return swept


def _fail(mlflow_client: Any, run: Any, reason: str) -> None:
    run_id = run.info.run_id
    mlflow_client.set_tag(run_id, FAILURE_TAG, reason)
    mlflow_client.set_tag(run_id, "swept_by", f"{socket.gethostname()}:{os.getpid()}")
    mlflow_client.set_terminated(run_id, status="FAILED")
    log.warning("MLflow run %s (%s) marked FAILED: %s", run_id, run.info.run_name, reason)
