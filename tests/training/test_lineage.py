"""Lineage, as the retraining WorkflowTemplate passes it: the alert's name and labels and the
workflow's name reach the training data manifest, every MLflow run of the DAG and the
registered version's tags, through the same CLI flags the template renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bigbertha.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LABELS = {"alertname": "BigBerthaNegativeFeedbackHigh", "model_version": "smollm2", "x": "é"}


def test_alert_lineage_reaches_the_manifest_the_runs_and_the_version(
    clean_env: Path,
    mlflow_server: Any,
    tiny_model: Path,
    task_data: Path,
) -> None:
    from mlflow import MlflowClient

    model_name = "lineage-llm"
    config = clean_env / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mlflow": {"tracking_uri": mlflow_server.url, "model_name": model_name},
                "finetune": {
                    "base_model": str(tiny_model),
                    "min_examples": 4,
                    "feedback_examples": 0,
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
    bigbertha("prepare-data", "--data", str(task_data), "--output", str(data))
    manifest = json.loads((clean_env / "run" / "data.manifest.json").read_text())
    assert manifest["lineage"] == expected
    adapter = clean_env / "run" / "adapter"
    bigbertha("finetune", "--data", str(data), "--output", str(adapter))
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
