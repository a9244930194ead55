"""The whole retraining loop in one process: alert -> data -> fine-tune -> evaluate -> gate
(-> canary).

    bigbertha retrain --alert-payload alert.json --eval-data s3://datasets/eval.jsonl

In the cluster the same steps run as the finetune WorkflowTemplate's DAG (check, prepare-data,
finetune, evaluate, promote, and canary when ``canary.share`` > 0), each a `bigbertha`
subcommand; this module runs them back to back for local use and tests. `plan_from_alert`
decides from an Alertmanager webhook body (or the Argo Events webhook event data wrapping it)
whether to start a run: only alerts that are firing and labelled ``bigbertha_action=retrain``
(and name this model, when they carry a ``model`` label) do; resolved and page-only
notifications do not.

A run holds an exclusive lock (``retrain.lock_file``) from the first step to the gate, so two
runs never train at once: the second waits up to ``retrain.lock_wait_seconds`` and then refuses
(`RetrainBusy`, counted as ``skipped``). Holding it, the run first asks training/cooldown.py
whether it may train (one run per alert episode, a cooldown per champion version); a run that
may not is ``skipped`` with the reason recorded. A failure at any step leaves the ``champion``
alias as it was (the alias is the last thing `promote` moves), is counted as ``failed`` and its
reason goes to the log, the JSON report and an MLflow run tagged ``failure_reason``; a
challenger the run put on a canary is retired then, so no canary goes on without its decision
step.

Nothing is left half-done for the next run: MLflow calls fail within seconds when the server is
down (`tracking.bound_client_retries`), and before training a run marks the MLflow runs that a
killed job left RUNNING as FAILED (`tracking.sweep_stale_runs`) and settles challengers that
were registered but never gated (`promote.settle_ungated`). The cluster Workflow's exit handler
(`record_exit`) does the same for the Workflow that just ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import BigberthaError, Busy, ExitCode, InputError
from bigbertha.models import registry, tracking
from bigbertha.training import canary, cooldown, evaluate, finetune, promote

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

RETRAIN_ACTION = "retrain"


class RetrainBusy(Busy):
    """Another retrain run holds the lock; this one did not start."""


class RetrainFailed(BigberthaError):
    """A step failed; the champion is unchanged. Exits with the failed step's code (a bug in a
    step is a bug here too)."""

    exit_code = ExitCode.BUG

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        if isinstance(cause, BigberthaError):
            self.exit_code = cause.exit_code


@dataclass
class RetrainPlan:
    """What an alert asks for: one run, with the triggering alert as lineage."""

    alert_name: str
    alert_labels: dict[str, str]
    alerts: list[str] = field(default_factory=list)  # every firing retrain alert's name
    fingerprint: str = ""
    starts_at: str = ""

    @property
    def episode(self) -> str:
        """The alert episode id (what the chart's Sensor names the Workflow after)."""
        if not (self.fingerprint or self.starts_at):
            return ""
        return cooldown.episode_id(self.fingerprint, self.starts_at)

    def lineage(self) -> dict[str, str]:
        return {
            "alert_name": self.alert_name,
            "alert_labels": json.dumps(self.alert_labels, sort_keys=True),
        }


def plan_from_alert(payload: Any, *, model_name: str | None = None) -> RetrainPlan | None:
    """A plan when the payload holds a firing ``bigbertha_action=retrain`` alert, else None.

    Accepts the Alertmanager webhook body or Argo Events' ``{"header", "body"}`` event data.
    Raises InputError for something that is neither.
    """
    body = payload.get("body") if isinstance(payload, dict) and "header" in payload else payload
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise InputError(f"alert payload: body is not JSON ({exc})") from exc
    if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
        raise InputError("alert payload: not an Alertmanager webhook message (no 'alerts' list)")
    firing = []
    for alert in body["alerts"]:
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if not isinstance(labels, dict) or alert.get("status") != "firing":
            continue
        if labels.get("bigbertha_action") != RETRAIN_ACTION:
            continue
        if model_name and labels.get("model", model_name) != model_name:
            log.info(
                "alert %s is about model %s, not ours", labels.get("alertname"), labels["model"]
            )
            continue
        firing.append(alert)
    if not firing:
        return None
    first = firing[0]
    return RetrainPlan(
        alert_name=str(first["labels"].get("alertname", "")),
        alert_labels={str(k): str(v) for k, v in first["labels"].items()},
        alerts=[str(a["labels"].get("alertname", "")) for a in firing],
        fingerprint=str(first.get("fingerprint", "")),
        starts_at=str(first.get("startsAt", "")),
    )


def read_alert_payload(path: Path) -> Any:
    """The JSON in an alert payload file; InputError naming the file otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"alert payload {path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise InputError(f"alert payload {path}: not JSON ({exc})") from exc


@contextlib.contextmanager
def training_lock(path: Path, wait_seconds: float) -> Iterator[None]:
    """Hold an exclusive flock on `path`; wait up to `wait_seconds`, then raise RetrainBusy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise RetrainBusy(
                        f"another retrain run (pid {holder}) holds {path}; "
                        f"not starting (waited {wait_seconds:g}s, retrain.lock_wait_seconds)"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass
class RetrainResult:
    """A run's outcome: succeeded (whatever the gate said), failed, or skipped."""

    result: str
    reason: str
    step: str | None = None
    plan: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


def run(
    settings: Settings,
    *,
    plan: RetrainPlan | None = None,
    data: Sequence[str] | None = None,
    eval_data: str | None = None,
    workflow_name: str | None = None,
    report: str | None = None,
) -> RetrainResult:
    """Fine-tune, evaluate and gate under the retrain lock; the champion moves only on success."""
    tracking.bound_client_retries(settings)
    recorder = _recorder(settings)
    lineage = {**(plan.lineage() if plan else {}), "workflow_name": workflow_name or ""}
    plan_doc = asdict(plan) if plan else None
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                training_lock(Path(settings.retrain.lock_file), settings.retrain.lock_wait_seconds)
            )
        except RetrainBusy as exc:
            recorder.record_retrain_run("skipped")
            _write(settings, report, RetrainResult("skipped", str(exc), plan=plan_doc))
            raise
        step = "check"
        try:
            # Under the lock, so two decisions never race: one run per alert episode, and the
            # cooldown per champion version from the last run's start.
            episode = plan.episode if plan else ""
            check = cooldown.check(settings, episode=episode, lineage=lineage)
            if not check.train:
                recorder.record_retrain_run("skipped")
                skipped = RetrainResult("skipped", check.reason, "check", plan_doc)
                _write(settings, report, skipped)
                return skipped
            run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
            workdir = Path(settings.retrain.workdir) / run_id
            # The evaluation set and MLflow are checked before any training time is spent; runs
            # and challengers a killed run left behind are closed first (we hold the lock).
            eval_uri, _ = evaluate.load_eval_set(settings, eval_data)
            _sweep(settings)
            promote.settle_ungated(settings)
            step = "finetune"
            output = {"output": str(workdir / "adapter")}
            ft_settings = settings.model_copy(
                update={"finetune": settings.finetune.model_copy(update=output)}
            )
            tuned = finetune.run(ft_settings, data=data, lineage=lineage)
            step = "promote"
            decision = promote.run(
                settings,
                tuned.output,
                data=eval_uri,
                lineage={**lineage, "dataset_hash": tuned.dataset_hash},
                report=str(workdir / "decision.json"),
            )
            live = None
            if decision.decision == "challenger":
                step = "canary"
                live = canary.run(settings, version=decision.version, lineage=lineage)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = f"{step} failed: {first}"
            if not isinstance(exc, BigberthaError):
                log.exception("retrain: unexpected error in step %s", step)
            log.error("retrain: %s; the champion is unchanged", reason)
            recorder.record_retrain_run("failed")
            if not isinstance(exc, registry.MlflowUnavailable):  # it would only wait again
                _record_failure(settings, step, reason, lineage)
            if step == "canary":
                _retire_orphan(settings, reason, lineage)
            _write(settings, report, RetrainResult("failed", reason, step, plan_doc))
            raise RetrainFailed(f"retrain: {reason}; the champion is unchanged", exc) from exc
    recorder.record_retrain_run("succeeded")
    result = RetrainResult(
        "succeeded",
        live.reason if live else decision.reason,
        None,
        plan_doc,
        tuned.to_json(),
        decision.to_json(),
        live.to_json() if live else None,
    )
    _write(settings, report, result)
    return result


def _write(settings: Settings, report: str | None, result: RetrainResult) -> None:
    if report:
        storage.write_bytes(settings, report, json.dumps(result.to_json(), indent=2).encode())
