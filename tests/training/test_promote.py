"""The promotion gate against the real MLflow registry: both ways, previous, rollback, telemetry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bigbertha.core.settings import Settings
from bigbertha.models import registry, tracking
from bigbertha.training import finetune, promote
from tests.training.helpers import telemetry_counts

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def with_finetune(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"finetune": settings.finetune.model_copy(update=changes)})


@pytest.mark.parametrize(
    ("metric", "better", "worse"),
    [
        ("perplexity", 8.0, 12.0),
        ("token_f1", 0.6, 0.4),
        ("rouge_l", 0.6, 0.4),
        ("tokens_per_second", 12.0, 8.0),
    ],
)
def test_each_reported_metric_improves_in_its_own_direction(
    metric: str, better: float, worse: float
) -> None:
    """Every metric `evaluate` reports (test_evaluate checks the set) is read the right way
    round: perplexity falls as a model gets better, the others rise."""
    champion = (better + worse) / 2
    assert promote.improvement(metric, better, champion) == pytest.approx(0.2)
    assert promote.improvement(metric, worse, champion) == pytest.approx(-0.2)


def test_gate_promotes_better_keeps_previous_rejects_worse_and_rolls_back(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    redis_server: Any,
    tiny_model: Path,
    tmp_path: Path,
    clean_env: Path,
) -> None:
    adapter, result, trained_settings = trained_adapter
    redis_url = redis_server.extra["url"]
    name = f"{trained_settings.mlflow.model_name}-gate"
    settings = trained_settings.model_copy(
        update={
            "redis": trained_settings.redis.model_copy(update={"url": SecretStr(redis_url)}),
            "mlflow": trained_settings.mlflow.model_copy(update={"model_name": name}),
        }
    )
    before = telemetry_counts(redis_url, "bigbertha_promotions_total")

    # 1. No champion yet: the challenger must beat its own base model, and does.
    first = promote.run(settings, str(adapter), lineage={"workflow_name": "wf-1"})
    assert first.decision == "promoted", first.reason
    assert registry.alias_version(settings, "champion") == first.version
    tags = registry.version_tags(settings, first.version)
    assert tags["gate.decision"] == "promoted"
    assert tags["base_model"] == str(tiny_model) and tags["dataset_hash"] == result.dataset_hash
    assert tags["alert_name"] == "BigBerthaNegativeFeedbackHigh" and tags["workflow_name"] == "wf-1"

    # 2. A stronger challenger trained on top of the champion replaces it; the old one is previous.
    champion_ref = f"models:/{name}@champion"
    stronger = finetune.run(
        with_finetune(settings, base_model=champion_ref, max_steps=30, output=str(tmp_path / "s"))
    )
    assert stronger.base_model == f"models:/{name}/{first.version}"  # the alias is pinned
    second = promote.run(settings, stronger.output)
    assert second.decision == "promoted", second.reason
    assert registry.alias_version(settings, "champion") == second.version
    assert registry.alias_version(settings, "previous") == first.version

    # 3. A barely trained challenger is registered but does not become champion.
    weak_settings = with_finetune(
        settings, max_steps=1, learning_rate=1e-6, output=str(tmp_path / "weak")
    )
    weak = finetune.run(weak_settings)
    third = promote.run(settings, weak.output)
    assert third.decision == "rejected"
    assert third.reason.startswith("rejected: perplexity") and "not better by 0.0%" in third.reason
    assert third.evidence == "sufficient"  # its whole interval is worse: a verdict, not a doubt
    assert registry.alias_version(settings, "champion") == second.version
    tags = registry.version_tags(settings, str(third.version))
    assert tags["gate.decision"] == "rejected"
    assert float(tags["gate.perplexity.challenger"]) > float(tags["gate.perplexity.champion"])

    # 4. Rollback restores the previous champion.
    back = promote.rollback(settings)
    assert (back.champion_before, back.champion_after) == (second.version, first.version)
    assert registry.alias_version(settings, "champion") == first.version
    assert registry.alias_version(settings, "previous") is None
    with pytest.raises(registry.BigberthaError, match="no 'previous' alias"):
        promote.rollback(settings)

    after = telemetry_counts(redis_url, "bigbertha_promotions_total")
    gained = {k: after.get(k, 0) - before.get(k, 0) for k in ("promoted", "rejected", "rollback")}
    assert gained == {"promoted": 2, "rejected": 1, "rollback": 1}


def test_gate_reuses_the_evaluate_steps_report_only_when_it_matches(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    tmp_path: Path,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bigbertha.training import evaluate

    adapter, _, trained_settings = trained_adapter
    settings = trained_settings.model_copy(
        update={
            "mlflow": trained_settings.mlflow.model_copy(
                update={"model_name": f"{trained_settings.mlflow.model_name}-reuse"}
            )
        }
    )
    # The workflow's evaluate step: the challenger's report, as `bigbertha evaluate` writes it.
    report = tmp_path / "evaluation.json"
    evaluate.run(settings, str(adapter), report=str(report))
    benchmarked: list[str] = []
    real_run = evaluate.run

    def spy(s: Settings, model_ref: str, **kwargs: Any) -> evaluate.EvalReport:
        benchmarked.append(model_ref)
        return real_run(s, model_ref, **kwargs)

    monkeypatch.setattr(evaluate, "run", spy)

    first = promote.run(settings, str(adapter), evaluation=str(report))
    assert first.decision == "promoted", first.reason
    assert len(benchmarked) == 1 and not benchmarked[0].startswith("models:/")  # the base only
    tags = registry.version_tags(settings, str(first.version))
    assert tags["gate.challenger_evaluation"] == str(report)
    assert float(tags["gate.perplexity.challenger"]) == pytest.approx(
        json.loads(report.read_text())["metrics"]["perplexity"], rel=1e-5
    )
    # Filed under its version too: as the next gate's champion its scores are read back.
    ref = f"models:/{settings.mlflow.model_name}/{first.version}"
    prepared = evaluate.prepare(settings, evaluate.load_eval_set(settings, None)[1].items)
    kept = evaluate.cached_report(settings, evaluate.score_key(settings, ref, prepared))
    assert kept is not None and kept.model == ref and kept.scores

    # A report made on another evaluation set is not trusted: the gate benchmarks again.
    stale = json.loads(report.read_text())
    stale["eval_hash"] = "0" * 64
    report.write_text(json.dumps(stale))
    benchmarked.clear()
    with caplog.at_level("WARNING", logger="bigbertha.training.promote"):
        second = promote.run(settings, str(adapter), evaluation=str(report))
    assert "its evaluation set differs" in caplog.text
    assert second.decision == "rejected"  # same weights as the champion: a tie is no win
    assert len(benchmarked) == 2 and benchmarked[0].startswith("models:/")
    tags = registry.version_tags(settings, str(second.version))
    assert tags["gate.challenger_evaluation"] == "evaluated by the gate"

    # An unreadable report is one warning, not a failed gate.
    caplog.clear()
    with caplog.at_level("WARNING", logger="bigbertha.training.promote"):
        third = promote.run(settings, str(adapter), evaluation=str(tmp_path / "missing.json"))
    assert "missing.json unusable" in caplog.text and third.decision == "rejected"


# --- a challenger registered but never gated --------------------------------------------------


def dead_owner() -> dict[str, str]:
    """Owner tags of a real process that has exited."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        tracking.HOST_TAG: socket.gethostname(),
        tracking.PID_TAG: process.stdout.strip(),
        tracking.PID_STARTED_TAG: "1.00",
    }


def test_ungated_versions_are_resumed_by_their_step_or_tagged_rejected(mlflow_server: Any) -> None:
    from mlflow import MlflowClient

    from tests.models.helpers import mlflow_settings

    settings = mlflow_settings(mlflow_server)
    name = settings.mlflow.model_name
    client = MlflowClient(mlflow_server.url)
    client.create_registered_model(name)

    def version(source: str, **tags: str) -> str:
        mv = client.create_model_version(name, "s3://models/x", tags={"source": source, **tags})
        return str(mv.version)

    abandoned = version("s3://runs/wf-1/adapter", workflow_name="wf-1", **dead_owner())
    live = version("s3://runs/wf-3/adapter", **tracking.owner_tags())  # a gate at work here
    retried = version("s3://runs/wf-2/adapter", workflow_name="wf-2", **{tracking.HOST_TAG: "pod"})
    decided = version("s3://runs/wf-0/adapter", **{**dead_owner(), "gate.decision": "promoted"})
    champion = version("s3://runs/manual/adapter", **dead_owner())
    client.set_registered_model_alias(name, "champion", champion)
    outside = version("s3://runs/elsewhere/adapter")  # not registered by a gate

    # Argo retries wf-2's promote step after MLflow failed right after registering: the retry
    # gates the version already registered instead of registering the adapter twice.
    assert (
        promote.settle_ungated(settings, challenger="s3://runs/wf-2/adapter", workflow_name="wf-2")
        == retried
    )
    tags = registry.version_tags(settings, abandoned)
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.reason"].startswith("never gated: the promote step that registered it")
    assert "is gone" in tags["gate.reason"]
    for untouched in (live, retried, champion, outside):
        assert "gate.decision" not in registry.version_tags(settings, untouched)
    assert registry.version_tags(settings, decided)["gate.decision"] == "promoted"
    # Another workflow's young version is not ours to gate, nor abandoned.
    assert promote.settle_ungated(settings, challenger="s3://runs/wf-2/adapter") is None
    # wf-2's exit handler: the Workflow is over, so its ungated version is rejected.
    promote.settle_ungated(settings, ended_workflow="wf-2")
    assert "its workflow wf-2 has ended" in registry.version_tags(settings, retried)["gate.reason"]


def test_a_gate_killed_after_registering_is_finished_by_the_next_try(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    task_data: Path,
    mlflow_server: Any,
    clean_env: Path,
) -> None:
    """A real promote process is killed between registering and deciding; the retry of the
    step (same workflow) gates that version: no second registration, no version left ungated."""
    adapter, _, trained_settings = trained_adapter
    settings = trained_settings.model_copy(
        update={
            "mlflow": trained_settings.mlflow.model_copy(
                update={"model_name": f"{trained_settings.mlflow.model_name}-killed"}
            )
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGBERTHA_", "MLFLOW_HTTP_"))}
    env |= {
        "BIGBERTHA_MLFLOW__TRACKING_URI": mlflow_server.url,
        "BIGBERTHA_MLFLOW__MODEL_NAME": settings.mlflow.model_name,
        "BIGBERTHA_EVALUATE__MAX_NEW_TOKENS": "4000",  # a slow gate: it is killed during it
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bigbertha",
            "promote",
            "--challenger",
            str(adapter),
            "--data",
            str(task_data),
            "--workflow-name",
            "wf-killed",
        ],
        env=env,
        cwd=clean_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    registered: list[Any] = []
    while not registered and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        registered = registry.versions(settings)
    process.kill()
    process.wait(timeout=60)
    assert len(registered) == 1, "the killed promote registered nothing"
    version = str(registered[0].version)
    assert "gate.decision" not in registry.version_tags(settings, version)

    retry = promote.run(
        settings, str(adapter), data=str(task_data), lineage={"workflow_name": "wf-killed"}
    )
    assert retry.version == version
    assert [str(v.version) for v in registry.versions(settings)] == [version]
    assert registry.version_tags(settings, version)["gate.decision"] == retry.decision


def test_a_passed_gate_with_a_canary_share_makes_a_challenger_not_a_champion(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    mlflow_server: Any,
    redis_server: Any,
    tmp_path: Path,
    clean_env: Path,
) -> None:
    from bigbertha.training import canary

    adapter, _, trained_settings = trained_adapter
    redis_url = redis_server.extra["url"]
    settings = trained_settings.model_copy(
        update={
            "redis": trained_settings.redis.model_copy(update={"url": SecretStr(redis_url)}),
            "mlflow": trained_settings.mlflow.model_copy(
                update={"model_name": f"{trained_settings.mlflow.model_name}-canary"}
            ),
            "canary": trained_settings.canary.model_copy(update={"share": 0.25}),
        }
    )
    before = telemetry_counts(redis_url, "bigbertha_promotions_total")
    report = tmp_path / "promotion.json"
    decision = promote.run(
        settings, str(adapter), lineage={"workflow_name": "wf-9"}, report=str(report)
    )
    assert decision.decision == "challenger", decision.reason
    assert decision.reason.endswith(
        "challenger for 25% of new conversations until the live canary decides"
    )
    assert decision.champion_after is None  # nothing promoted yet: users decide
    assert registry.alias_version(settings, "challenger") == decision.version
    assert registry.alias_version(settings, "champion") is None
    tags = registry.version_tags(settings, str(decision.version))
    assert tags["gate.decision"] == "challenger" and float(tags[canary.STARTED_TAG]) > 0
    assert tags["canary.share"] == "0.25"
    # The canary step reads the version from this report.
    assert json.loads(report.read_text())["decision"] == "challenger"
    after = telemetry_counts(redis_url, "bigbertha_promotions_total")
    assert after.get("challenger", 0) == before.get("challenger", 0) + 1
