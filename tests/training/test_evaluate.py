"""evaluate: answer-quality metrics, and a benchmark run logged to MLflow with a JSON report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bigbertha.training import data as training_data
from bigbertha.training import evaluate
from tests.models.helpers import mlflow_settings


def test_token_f1_and_rouge_l_follow_their_definitions() -> None:
    assert evaluate.token_f1("The sky is blue.", "the sky is blue") == 1.0
    assert evaluate.token_f1("grass", "the sky is blue") == 0.0
    # 2 common tokens of 3 predicted (precision 2/3) and 3 referenced (recall 2/3).
    assert evaluate.token_f1("sky is green", "sky is blue") == pytest.approx(2 / 3)
    # LCS of "a b c d" and "a c b d" is 3 tokens: F = 3/4.
    assert evaluate.rouge_l("w x y z", "w y x z") == pytest.approx(0.75)
    assert evaluate.rouge_l("", "") == 1.0
    assert evaluate.rouge_l("", "x") == 0.0


@pytest.mark.slow
def test_evaluate_writes_a_report_and_logs_metrics(
    mlflow_server: Any,
    tiny_model: Path,
    task_data: Path,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    settings = mlflow_settings(
        mlflow_server, evaluate={"data": str(task_data), "max_examples": 4, "max_new_tokens": 3}
    )
    report_path = tmp_path / "report.json"
    result = evaluate.run(settings, str(tiny_model), report=str(report_path))
    report = json.loads(report_path.read_text())
    assert report["model"] == str(tiny_model) and report["examples"] == 4
    examples = training_data.parse_jsonl(task_data.read_bytes(), "x")[0][:4]
    assert report["eval_hash"] == training_data.dataset_hash(examples)
    metrics = report["metrics"]
    assert set(metrics) == {"perplexity", "token_f1", "rouge_l", "tokens_per_second"}
    # A random model over a ~100-word vocabulary: perplexity near the vocabulary size.
    assert 10 < metrics["perplexity"] < 1000 and math.isfinite(metrics["perplexity"])
    assert metrics["tokens_per_second"] > 0
    run = MlflowClient(settings.mlflow.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["perplexity"] == pytest.approx(metrics["perplexity"])
    assert run.data.params["eval_hash"] == report["eval_hash"]


def test_missing_evaluation_set_is_a_clear_error(tmp_path: Path) -> None:
    from bigbertha.core.errors import ConfigError
    from bigbertha.core.settings import Settings

    with pytest.raises(ConfigError, match="no evaluation set"):
        evaluate.load_eval_set(Settings(), None)
    (tmp_path / "bad.jsonl").write_text("{}\n")
    with pytest.raises(training_data.DatasetTooSmall, match="no usable examples"):
        evaluate.load_eval_set(Settings(), str(tmp_path / "bad.jsonl"))


@pytest.mark.slow
def test_scoring_in_batches_scores_each_example_as_alone(tiny_model: Path) -> None:  # noqa: F811
    # Prompts of different lengths share a batch: padding must change no answer and no loss.
    from bigbertha.core.settings import Settings
    from bigbertha.models import loading

    model, tokenizer, _ = loading.load_causal_lm(str(tiny_model), Settings())
    rows = [
        {"prompt": "what color is the sky ?", "completion": "the sky is blue"},
        {"prompt": "what color is the grass number 3 and the snow ?", "completion": "green"},
        {"prompt": "sun ?", "completion": "the sun is yellow"},
        {"prompt": "what color is the night number 1 ?", "completion": "the night is black"},
        {"prompt": "what color is the apple and the grape ?", "completion": "red and purple"},
    ]
    text = "\n".join(json.dumps(row) for row in rows).encode()
    examples = training_data.parse_jsonl(text, "x")[0]
    lengths = {len(evaluate._encode(tokenizer, e)[0]) for e in examples}
    assert len(lengths) > 1, "the examples should differ in prompt length"
    alone, alone_samples = evaluate.score(model, tokenizer, examples, 6, batch_size=1)
    batched, batched_samples = evaluate.score(model, tokenizer, examples, 6, batch_size=4)
    assert batched_samples == alone_samples
    assert batched["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-4)
    assert batched["token_f1"] == alone["token_f1"] and batched["rouge_l"] == alone["rouge_l"]
