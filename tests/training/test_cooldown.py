"""The retrain check against a real MLflow: one run per alert episode, a cooldown per champion
version measured from the last run's start (an injected clock, no sleeping), skips recorded
with their reason, counted once, and the CLI step the finetune DAG runs first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.errors import InputError
from bigbertha.core.settings import Settings
from bigbertha.training import cooldown
from tests.models.helpers import mlflow_settings
from tests.training.helpers import retrain_counts

HOUR = 3600.0
T0 = 1_790_000_000.0  # an injected "now"


def settings_for(mlflow_server: Any, redis_server: Any, seconds: float = HOUR) -> Settings:
    base = mlflow_settings(mlflow_server, redis={"url": redis_server.extra["url"]})
    return base.model_copy(
        update={"retrain": base.retrain.model_copy(update={"cooldown_seconds": seconds})}
    )


def promote_a_champion(settings: Settings) -> str:
    """A registered version with the champion alias (no weights: the check reads the alias)."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow.tracking_uri)
    name = settings.mlflow.model_name
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, "s3://nowhere/model", run_id=None).version
    client.set_registered_model_alias(name, "champion", version)
    return str(version)


def test_episode_id_is_the_sensors(shared_dir: Path) -> None:
    body = json.loads((shared_dir / "samples/alertmanager-webhook-firing.json").read_text())
    alert = body["alerts"][0]
    assert (alert["fingerprint"], alert["startsAt"]) == (
        "a5626009deddaacb",
        "2026-08-24T08:47:13.407Z",
    )
    episode = cooldown.episode_id(alert["fingerprint"], alert["startsAt"])
    assert episode == "eaa2de8d1f"  # what the rendered Sensor template yields (test_events)


def test_one_run_per_episode_and_a_cooldown_from_the_last_start(
    mlflow_server: Any, redis_server: Any
) -> None:
    settings = settings_for(mlflow_server, redis_server)

    def check(episode: str, at: float, workflow: str) -> cooldown.Decision:
        lineage = {"workflow_name": workflow, "alert_name": "BigBerthaNegativeFeedbackHigh"}
        return cooldown.check(settings, episode=episode, lineage=lineage, clock=lambda: at)

    first = check("aaaaaaaaaa", T0, "wf-a")
    assert first.train and first.champion_version == cooldown.NO_CHAMPION
    # The same episode again, at any time later: never a second run.
    for later in (T0 + 60, T0 + 10 * HOUR):
        repeat = check("aaaaaaaaaa", later, "wf-a2")
        assert not repeat.train
        assert repeat.reason.startswith("alert episode aaaaaaaaaa already started a run")
        assert "workflow wf-a at " in repeat.reason
    # A new episode 30 minutes after the first run started: inside the cooldown.
    soon = check("bbbbbbbbbb", T0 + 1800, "wf-b")
    assert not soon.train
    assert soon.reason.startswith("cooldown: a run for champion version none started 1800s ago")
    assert "the next may start in 1800s (retrain.cooldown_seconds=3600)" in soon.reason
    # Measured from the last START, not a clock bucket: 3599 s later is still too soon, 3600 s
    # later is not, whatever hour or minute boundary lies between.
    assert not check("cccccccccc", T0 + 3599, "wf-c").train
    after = check("dddddddddd", T0 + 3600, "wf-d")
    assert after.train, after.reason
    # ...and that run's start is what the next check measures from.
    assert not check("eeeeeeeeee", T0 + 3600 + 60, "wf-e").train
    # Decisions are recorded: what the exit handler reads back.
    assert cooldown.decision_of(settings, "wf-b") == cooldown.SKIP
    assert cooldown.decision_of(settings, "wf-d") == cooldown.TRAIN
    assert cooldown.decision_of(settings, "never-ran") is None


def test_the_cooldown_is_per_champion_version(mlflow_server: Any, redis_server: Any) -> None:
    settings = settings_for(mlflow_server, redis_server)
    v1 = promote_a_champion(settings)
    assert cooldown.check(settings, episode="1111111111", clock=lambda: T0).train
    blocked = cooldown.check(settings, episode="2222222222", clock=lambda: T0 + 60)
    assert not blocked.train and blocked.champion_version == v1
    v2 = promote_a_champion(settings)  # the retrained model was promoted, and is bad again
    fresh = cooldown.check(settings, episode="3333333333", clock=lambda: T0 + 120)
    assert fresh.train and fresh.champion_version == v2
    # Another model name is another history.
    other = settings.model_copy(update={"mlflow": mlflow_settings(mlflow_server).mlflow})
    assert cooldown.check(other, episode="2222222222", clock=lambda: T0 + 60).train


def test_zero_cooldown_still_allows_one_run_per_episode(
    mlflow_server: Any, redis_server: Any
) -> None:
    settings = settings_for(mlflow_server, redis_server, seconds=0)
    assert cooldown.check(settings, episode="abcabcabca", clock=lambda: T0).train
    assert cooldown.check(settings, episode="defdefdefd", clock=lambda: T0 + 1).train
    assert not cooldown.check(settings, episode="abcabcabca", clock=lambda: T0 + 2).train
    assert cooldown.check(settings, clock=lambda: T0 + 3).train  # a manual run: no episode


def test_a_malformed_episode_is_an_input_error(mlflow_server: Any, redis_server: Any) -> None:
    with pytest.raises(InputError, match="--alert-episode"):
        cooldown.check(settings_for(mlflow_server, redis_server), episode="x' or '1'='1")


def test_the_dag_step_writes_its_decision_and_a_skip_is_counted_once(
    mlflow_server: Any,
    redis_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    clean_env: Path,
) -> None:
    """`retrain --check` (the DAG's first step) then `--record-exit` (its exit handler): a
    skipped Workflow is counted as skipped once, not also as succeeded."""
    settings = settings_for(mlflow_server, redis_server)
    for key, value in {
        "MLFLOW__TRACKING_URI": settings.mlflow.tracking_uri,
        "MLFLOW__MODEL_NAME": settings.mlflow.model_name,
        "REDIS__URL": redis_server.extra["url"],
        "RETRAIN__COOLDOWN_SECONDS": "3600",
    }.items():
        monkeypatch.setenv(f"BIGBERTHA_{key}", value)
    before = retrain_counts(redis_server.extra["url"])
    decisions = []
    for workflow, episode in (
        ("bigbertha-retrain-aaaa", "aaaa"),
        ("bigbertha-retrain-bbbb", "bbbb"),
    ):
        out = tmp_path / f"{workflow}.decision"
        argv = ["retrain", "--check", "--decision-file", str(out), "--alert-episode", episode]
        result = CliRunner().invoke(app, [*argv, "--workflow-name", workflow])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        assert out.read_text() == doc["decision"]
        decisions.append(doc)
        status = ["retrain", "--record-exit", "--status", "Succeeded"]
        result = CliRunner().invoke(app, [*status, "--workflow-name", workflow])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["result"] == (
            "succeeded" if doc["decision"] == "train" else "skipped"
        )
    assert [d["decision"] for d in decisions] == ["train", "skip"]
    assert decisions[1]["reason"].startswith("cooldown: a run for champion version none")
    after = retrain_counts(redis_server.extra["url"])
    assert after.get("skipped", 0) == before.get("skipped", 0) + 1
    assert after.get("succeeded", 0) == before.get("succeeded", 0) + 1
