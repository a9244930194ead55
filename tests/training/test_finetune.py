"""finetune.run: LoRA fine-tuning lowers perplexity, logs to MLflow, QLoRA works on CPU."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core.errors import InputError
from bigbertha.core.settings import Settings
from bigbertha.models import loading
from bigbertha.training import data as training_data
from bigbertha.training import evaluate, finetune
from tests.training.helpers import train_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_finetuning_lowers_perplexity_on_the_training_distribution(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    tiny_model: Path,
) -> None:
    output, result, settings = trained_adapter
    _, the_set = evaluate.load_eval_set(settings, None)
    examples = [p.example for p in evaluate.prepare(settings, the_set.items)]

    def perplexity(model_ref: Path) -> float:
        generated = evaluate.score(
            *loading.load_causal_lm(str(model_ref), settings)[:2], examples, 1
        )
        return math.exp(sum(generated.nll) / sum(generated.tokens))

    assert perplexity(output) < 0.7 * perplexity(tiny_model)
    assert result.steps == 40 and result.examples == 16 and not result.quantized


def test_adapter_is_published_with_its_lineage_and_the_run_in_mlflow(
    trained_adapter: tuple[Path, finetune.FinetuneResult, Settings],
    tiny_model: Path,
    task_data: Path,
) -> None:
    from mlflow import MlflowClient

    output, result, settings = trained_adapter
    assert (output / "adapter_config.json").is_file()
    assert (output / "adapter_model.safetensors").is_file()
    lineage = json.loads((output / loading.LINEAGE_FILE).read_text())
    # The hash of the file trained on, as its bytes are: what a manifest beside it would say.
    expected_hash = hashlib.sha256(task_data.read_bytes()).hexdigest()
    assert lineage["base_model"] == str(tiny_model)
    assert lineage["dataset_hash"] == expected_hash == result.dataset_hash
    assert lineage["data"] == result.data == str(task_data)
    assert lineage["alert_name"] == "BigBerthaNegativeFeedbackHigh"
    assert lineage["workflow_name"] == "wf-test"

    client = MlflowClient(settings.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["dataset_hash"] == expected_hash
    assert run.data.tags["data"] == str(task_data)
    assert run.data.params["examples"] == "16"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert len(losses) == 4  # the loss curve: one point per 10 steps
    assert losses[-1] < losses[0]


def test_qlora_trains_a_4bit_base_on_cpu(
    mlflow_server: Any,
    tiny_model: Path,
    task_data: Path,
    tmp_path: Path,
) -> None:
    from bitsandbytes.nn import Linear4bit

    settings = train_settings(
        mlflow_server, tiny_model, task_data, tmp_path / "qlora", quantize="4bit", max_steps=2
    )
    result = finetune.run(settings)
    assert result.quantized and result.steps == 2
    model, _, _ = loading.load_causal_lm(str(tmp_path / "qlora"), settings, quantize=True)
    assert any(isinstance(m, Linear4bit) for m in model.modules())


def test_a_too_small_dataset_stops_before_any_model_is_loaded(
    mlflow_server: Any, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    settings = train_settings(mlflow_server, tmp_path / "no-such-model", data, tmp_path / "out")
    with pytest.raises(training_data.DatasetTooSmall, match="1 examples, need at least 8"):
        finetune.run(settings)
    # A row that is not an example is not skipped: the file is trained on as written, or not.
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n' * 8)
    with pytest.raises(InputError, match="rows are not training examples"):
        finetune.run(settings)
    assert not (tmp_path / "out").exists()


def test_activation_checkpointing_is_off_on_cpu_unless_asked_for(tmp_path: Path) -> None:
    # trl's default (on) costs the demo's CPU fine-tune a third of every step for memory it has.
    auto = finetune.sft_config(Settings().finetune, tmp_path, report_to=[])
    asked = Settings(finetune={"gradient_checkpointing": "on"}).finetune
    assert auto.gradient_checkpointing is False
    assert finetune.sft_config(asked, tmp_path, report_to=[]).gradient_checkpointing is True
