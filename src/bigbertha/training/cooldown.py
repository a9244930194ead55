"""May this retraining run train? One run per alert episode; a cooldown per champion version.

    bigbertha retrain --check --decision-file /tmp/retrain-decision --alert-episode ab12cd34ef

The first step of the finetune DAG (and of `bigbertha retrain`), under the lock that lets one
run train at a time, so decisions never race. It asks MLflow:
1. did a run for this alert episode already start? (the Sensor names the Workflow after the
   episode, but finished Workflows are deleted after a day while an alert may keep firing);
2. did a run for the current champion version start less than `retrain.cooldown_seconds`
   ago? The cooldown is measured from that run's start, not from a clock bucket, and is per
   champion version: a newly promoted champion that is bad again may be retrained at once.
Each decision is an MLflow run in the retrain experiment (tag `step=retrain-check`), started
at the decision time: a "train" decision is the start the next check measures from, and a
"skip" carries its reason. The Workflow then ends cleanly (prepare-data's `when` is false).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import ConfigError, InputError
from bigbertha.models import registry

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

STEP = "retrain-check"
TRAIN, SKIP = "train", "skip"
NO_CHAMPION = "none"
_EPISODE = re.compile(r"^[0-9a-f]{0,64}$")


def episode_id(fingerprint: str, starts_at: str) -> str:
    """The alert episode as the Sensor's dataTemplate computes it (sensor-retrain.yaml):
    the first 10 hex digits of sha256("<fingerprint>|<startsAt>")."""
    return hashlib.sha256(f"{fingerprint}|{starts_at}".encode()).hexdigest()[:10]


@dataclass
class Decision:
    """The check's answer, as printed and recorded."""

    decision: str  # TRAIN or SKIP
    reason: str
    champion_version: str
    episode: str
    run_id: str | None = None

    @property
    def train(self) -> bool:
        return self.decision == TRAIN

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(
    settings: Settings,
    *,
    episode: str = "",
    lineage: Mapping[str, str] | None = None,
    clock: Callable[[], float] | None = None,
) -> Decision:
    """Decide and record whether a run may train now. ServiceUnavailable when MLflow is down."""
    if not _EPISODE.match(episode):
        raise InputError(f"--alert-episode {episode!r}: must be lower-case hex (the Sensor's id)")
    lineage = {k: v for k, v in (lineage or {}).items() if v}
    cooldown = settings.retrain.cooldown_seconds
    model = _model(settings)
    now = (clock or time.time)()
    with registry.mlflow_errors(settings):
        client = registry.client(settings)
        experiment = _experiment_id(client)
        champion = registry.alias_version(settings) or NO_CHAMPION
        decision = Decision(
            TRAIN, "no run for this episode or champion version yet", champion, episode
        )
        earlier = (
            _started(client, experiment, model, f"tags.alert_episode = '{episode}'")
            if episode
            else None
        )
        last = _started(client, experiment, model, f"tags.champion_version = '{champion}'")
        if earlier is not None:
            decision.decision = SKIP
            decision.reason = (
                f"alert episode {episode} already started a run "
                f"({_describe(earlier)}); one run per episode"
            )
        elif last is not None and cooldown > 0 and now - last.info.start_time / 1000 < cooldown:
            ago = now - last.info.start_time / 1000
            decision.decision = SKIP
            decision.reason = (
                f"cooldown: a run for champion version {champion} started {ago:.0f}s ago "
                f"({_describe(last)}); the next may start in {cooldown - ago:.0f}s "
                f"(retrain.cooldown_seconds={cooldown:g})"
            )
        elif last is not None:
            decision.reason = (
                f"last run for champion version {champion} started "
                f"{now - last.info.start_time / 1000:.0f}s ago (cooldown {cooldown:g}s)"
            )
        decision.run_id = _record(
            client, experiment, decision, {**lineage, "model_name": model}, now
        )
    log.info("retrain check: %s (%s)", decision.decision, decision.reason)
    return decision


def decision_of(settings: Settings, workflow_name: str) -> str | None:
    """The recorded decision of the check step of Workflow `workflow_name`, if any."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", workflow_name):
        return None  # not a Kubernetes name: no Workflow recorded a check under it
    with registry.mlflow_errors(settings):
        client = registry.client(settings)
        runs = client.search_runs(
            [_experiment_id(client)],
            filter_string=(
                f"tags.step = '{STEP}' and tags.workflow_name = '{workflow_name}' "
                f"and tags.model_name = '{_model(settings)}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return str(runs[0].data.tags.get("retrain_decision")) if runs else None


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(registry.EXPERIMENT))


def _model(settings: Settings) -> str:
    name = settings.mlflow.model_name
    if "'" in name or "\\" in name:
        raise ConfigError(f"mlflow.model_name {name!r}: no quotes or backslashes, please")
    return name


def _started(client: Any, experiment: str, model: str, condition: str) -> Any | None:
    """The most recent recorded "train" decision for `model` matching `condition`."""
    runs = client.search_runs(
        [experiment],
        filter_string=(
            f"tags.step = '{STEP}' and tags.retrain_decision = '{TRAIN}' "
            f"and tags.model_name = '{model}' and {condition}"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _describe(run: Any) -> str:
    tags = run.data.tags
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.info.start_time / 1000))
    return f"workflow {tags.get('workflow_name') or '-'} at {started}"


def _record(
    client: Any, experiment: str, decision: Decision, lineage: Mapping[str, str], now: float
) -> str:
    """One finished MLflow run per decision, started at the decision time."""
    tags = {
        **lineage,
        "step": STEP,
        "retrain_decision": decision.decision,
        "retrain_reason": decision.reason[:4000],
        "champion_version": decision.champion_version,
        "alert_episode": decision.episode,
        "mlflow.runName": f"retrain-check-{lineage.get('workflow_name') or 'local'}",
    }
    run = client.create_run(experiment, start_time=int(now * 1000), tags=tags)
    client.set_terminated(run.info.run_id, status="FINISHED", end_time=int(now * 1000))
    return str(run.info.run_id)
