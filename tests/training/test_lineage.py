"""Lineage, as the retraining WorkflowTemplate passes it: the alert's name and labels and the
workflow's name reach the training data manifest, every MLflow run of the DAG and the
registered version's tags, through the same CLI flags the template renders; and the training
file prepare-data writes, with the feedback log on, is the data of record: finetune trains on
it and nothing else, and the manifest, the finetune run and the version carry its one hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.telemetry.feedback import KEY as FEEDBACK_KEY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LABELS = {"alertname": "BigBerthaNegativeFeedbackHigh", "model_version": "smollm2", "x": "é"}


def rate_up(redis_url: str, turns: list[tuple[str, str, str]]) -> None:
    """Up-rated chat turns (conversation, turn id, question) in the feedback log, as the
    chatbot writes them: the turn, then its rating, newest first."""
    import redis

    client = redis.Redis.from_url(redis_url)
    passage = [{"text": "BigBertha retrains when users vote answers down.", "label": "a.md"}]
    for conversation, turn_id, question in turns:
        turn = {
            "ts": 1.0,
            "question": question,
            "answer": f"It is explained in the docs for {turn_id} [1].",
            "sources": [],
            "model_version": "1",
            "context": passage,
            "rating": None,
            "turn_id": turn_id,
            "conversation": conversation,
        }
        client.lpush(FEEDBACK_KEY, json.dumps(turn))
        client.lpush(FEEDBACK_KEY, json.dumps(turn | {"rating": "up", "ts": 2.0}))


def test_alert_lineage_reaches_the_manifest_the_runs_and_the_version(
    clean_env: Path,
    mlflow_server: Any,
    redis_server: Any,
    tiny_model: Path,
    task_data: Path,
) -> None:
    import redis
    from mlflow import MlflowClient

    redis_url = redis_server.extra["url"]
    redis.Redis.from_url(redis_url).delete(FEEDBACK_KEY)
    topics = ["alerts", "rollback", "ingestion", "canary", "install", "tuning", "gitops", "gpu"]
    rate_up(
        redis_url,
        [
            (f"conv-{t}", f"{t}-{n}", f"how does {t} work, part {n}?")
            for t in topics
            for n in (1, 2)
        ],
    )

    model_name = "lineage-llm"
    config = clean_env / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mlflow": {"tracking_uri": mlflow_server.url, "model_name": model_name},
                "redis": {"url": redis_url, "timeout_seconds": 2},
                "finetune": {
                    "base_model": str(tiny_model),
                    "min_examples": 4,
                    "feedback_examples": 100,
                    "eval_share": 0.5,
                    # The turns differ in a word or two: keep them all (dedupe has its tests).
                    "near_duplicate_threshold": 1.0,
                    "quantize": "none",
                    "max_steps": 2,
                    "batch_size": 8,
                },
                "evaluate": {"max_examples": 4, "max_new_tokens": 4},
            }
        )
    )
    flags = [
        "--alert-name",
        "BigBerthaNegativeFeedbackHigh",
        "--alert-labels",
        json.dumps(LABELS),
        "--workflow-name",
        "bigbertha-retrain-7f3a",
    ]
    expected = {
        "alert_name": "BigBerthaNegativeFeedbackHigh",
        "alert_labels": json.dumps(LABELS, sort_keys=True),
        "workflow_name": "bigbertha-retrain-7f3a",
    }

    def bigbertha(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(app, ["--config", str(config), *args, *flags])
        assert result.exit_code == 0, result.output
        out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return out

    data = clean_env / "run" / "data.jsonl"
    held = clean_env / "run" / "eval-feedback.jsonl"
    bigbertha(
        "prepare-data", "--data", str(task_data), "--output", str(data), "--eval-output", str(held)
    )
    manifest = json.loads((clean_env / "run" / "data.manifest.json").read_text())
    assert manifest["lineage"] == expected
    # Feedback is on: up-rated turns are in the file, each conversation on one side only.
    trained = [json.loads(line) for line in data.read_text().splitlines()]
    rows = [json.loads(line) for line in held.read_text().splitlines()]
    trained_text = data.read_text()
    assert manifest["sources"]["feedback"] > 0 and rows
    assert manifest["sources"]["feedback"] + len(rows) == 16
    for conversation in {r["conversation"] for r in rows}:
        assert f"how does {conversation[5:]} work" not in trained_text
    assert manifest["evaluation"]["hash"] == hashlib.sha256(held.read_bytes()).hexdigest()

    # Turns rated between prepare-data and finetune are not trained on: finetune reads the file.
    rate_up(redis_url, [("conv-late", f"late-{n}", f"a late question {n}?") for n in range(20)])
    adapter = clean_env / "run" / "adapter"
    tuned = bigbertha("finetune", "--data", str(data), "--output", str(adapter))
    assert tuned["examples"] == manifest["examples"] == len(trained)
    decision = bigbertha("promote", "--challenger", str(adapter), "--data", str(task_data))

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("bigbertha-retrain")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.workflow_name = 'bigbertha-retrain-7f3a'",
    )
    steps = {run.data.tags.get("step") for run in runs}
    assert steps == {"prepare-data", "finetune", "register", "evaluate"}
    for run in runs:
        assert {k: run.data.tags.get(k) for k in expected} == expected, run.info.run_name
    tags = client.get_model_version(model_name, decision["version"]).tags
    assert {k: tags.get(k) for k in expected} == expected
    # One dataset hash: the file's bytes = the manifest's = the finetune run's = the version's.
    file_hash = hashlib.sha256(data.read_bytes()).hexdigest()
    [finetune_run] = [r for r in runs if r.data.tags.get("step") == "finetune"]
    assert manifest["dataset_hash"] == file_hash == tuned["dataset_hash"]
    assert finetune_run.data.tags["dataset_hash"] == file_hash == tags["dataset_hash"]


def test_the_dag_trains_on_the_file_prepare_data_writes() -> None:
    """In the rendered WorkflowTemplate, finetune's --data is prepare-data's --output, and the
    held-out turns go beside it under the same run prefix."""
    from tests.chart.render import one, render

    wt = one(render(), "WorkflowTemplate", "bigbertha-finetune")["spec"]
    args = {t["name"]: t["container"]["args"] for t in wt["templates"] if "container" in t}

    def flag(step: str, name: str) -> str:
        value: str = args[step][args[step].index(name) + 1]
        return value

    train = flag("prepare-data", "--output")
    assert train.endswith("/{{workflow.name}}/data/train.jsonl")
    assert flag("finetune", "--data") == train
    assert args["finetune"].count("--data") == 1
    assert flag("prepare-data", "--eval-output") == train.replace("/train.", "/eval-feedback.")
