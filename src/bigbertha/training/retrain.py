"""The retraining Workflow's bookkeeping steps: its exit handler (`record_exit`).

    bigbertha retrain --record-exit --status Failed --failures '[...]' --workflow-name wf-1

The retraining pipeline has one definition, the finetune WorkflowTemplate's DAG (check,
prepare-data, finetune, evaluate, promote, and canary when ``canary.share`` > 0), each a
`bigbertha` subcommand; the local event gateway runs that same rendered template for
`bigbertha demo`. `bigbertha retrain` runs no pipeline of its own: ``--check`` is the DAG's
first step (training/cooldown.py: one run per alert episode, a cooldown per champion version)
and ``--record-exit`` its exit handler, here.

A failure at any step leaves the ``champion`` alias as it was (the alias is the last thing
`promote` moves). The exit handler counts the run (``bigbertha_retrain_runs_total``), records a
failure's step and reason in an MLflow run tagged ``failure_reason``, closes the MLflow runs
the Workflow left RUNNING and the challengers it registered but never gated (a step was
killed), and retires this run's challenger if its canary is still undecided, so no canary goes
on without its decision step. MLflow calls fail within seconds when the server is down
(`tracking.bound_client_retries`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import BigberthaError
from bigbertha.models import registry, tracking
from bigbertha.training import canary, cooldown, promote

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)


def _recorder(settings: Settings) -> Any:
    from bigbertha.telemetry.recorder import Recorder

    return Recorder.from_settings(settings)


def _record_failure(settings: Settings, step: str, reason: str, lineage: Mapping[str, str]) -> None:
    """Best effort: an MLflow run tagged with the failure (MLflow may be what failed)."""
    try:
        import mlflow

        registry.client(settings)
        mlflow.set_experiment(registry.EXPERIMENT)
        run_name = f"retrain-failed-{step}"
        with mlflow.start_run(run_name=run_name, tags=tracking.owner_tags()) as run:
            mlflow.set_tags(
                {"step": "retrain", "failed_step": step, "failure_reason": reason[:4000]}
            )
            mlflow.set_tags({k: v for k, v in lineage.items() if v})
            mlflow.end_run(status="FAILED")
            log.info("failure recorded in MLflow run %s", run.info.run_id)
    except Exception as exc:  # the failure is already logged and counted
        log.warning("could not record the failure in MLflow: %s", str(exc).splitlines()[0])


def record_exit(settings: Settings, status: str, failures: str, lineage: Mapping[str, str]) -> str:
    """The cluster Workflow's exit handler: count the run's result, record a failure's cause.

    `status` is Argo's `{{workflow.status}}` (Succeeded, Failed, Error); `failures` its
    `{{workflow.failures}}` JSON list of failed nodes (displayName, message, ...). The champion
    is never touched here: the alias only moves inside a successful promote step.
    """
    tracking.bound_client_retries(settings)
    result = "succeeded" if status == "Succeeded" else "failed"
    if result == "succeeded" and _checked_skip(settings, lineage.get("workflow_name", "")):
        return "skipped"  # counted by the check step, with its reason
    _recorder(settings).record_retrain_run(result)
    _settle_workflow(settings, lineage.get("workflow_name"))
    if result == "failed":
        try:
            nodes = json.loads(failures or "[]")
        except ValueError:
            nodes = [{"displayName": "workflow", "message": failures}]
        if not isinstance(nodes, list) or not nodes:
            nodes = [{"displayName": "workflow", "message": f"status {status}"}]
        step = str(nodes[0].get("displayName", "workflow")) if isinstance(nodes[0], dict) else ""
        reason = "; ".join(
            f"{n.get('displayName', '?')}: {n.get('message', '')}"
            for n in nodes
            if isinstance(n, dict)
        )
        log.error("retraining workflow %s: %s", status, reason)
        _record_failure(settings, step or "workflow", reason or status, lineage)
        _retire_orphan(settings, f"workflow {status}: {reason or status}", lineage)
    return result


def _checked_skip(settings: Settings, workflow_name: str) -> bool:
    """Whether the Workflow's check step decided to skip (its DAG then succeeds untrained)."""
    if not workflow_name:
        return False
    try:
        return cooldown.decision_of(settings, workflow_name) == cooldown.SKIP
    except BigberthaError as exc:  # MLflow answered the check minutes ago; say, then count
        log.warning("could not read the check's decision of %s: %s", workflow_name, exc)
        return False


def _sweep(settings: Settings, ended_workflow: str | None = None) -> None:
    """Runs of the retrain experiment a killed job left RUNNING: FAILED, with the reason."""
    with registry.mlflow_errors(settings):
        tracking.sweep_stale_runs(
            registry.client(settings),
            registry.EXPERIMENT,
            stale_after=settings.retrain.stale_after_seconds,
            ended_workflow=ended_workflow,
        )


def _settle_workflow(settings: Settings, workflow: str | None) -> None:
    """Best effort, in the exit handler: the Workflow is over, so its runs still RUNNING and its
    challengers never gated were abandoned (a step was killed): close them with the reason."""
    if not workflow:
        return
    try:
        _sweep(settings, ended_workflow=workflow)
        promote.settle_ungated(settings, ended_workflow=workflow)
    except BigberthaError as exc:
        log.warning("could not settle workflow %s in MLflow: %s", workflow, exc)


def _retire_orphan(settings: Settings, reason: str, lineage: Mapping[str, str]) -> None:
    """Retire the challenger this run's gate made, if its canary is still undecided: the
    decision step will not run any more. Best effort, as `_record_failure`."""
    workflow = lineage.get("workflow_name")
    if not workflow:
        return
    try:
        version = registry.alias_version(settings, registry.CHALLENGER)
        if version is None:
            return
        if registry.version_tags(settings, version).get("workflow_name") != workflow:
            return  # another run's canary
        canary.retire(settings, version, reason[:1000], lineage=lineage)
    except Exception as exc:  # the failure is already logged and counted
        log.warning("could not retire this run's challenger: %s", str(exc).splitlines()[0])
