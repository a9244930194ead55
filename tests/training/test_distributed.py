"""Data-parallel fine-tuning on CPU: `bigbertha finetune --nproc-per-node 2` runs two processes
under torchrun (gloo) and trains the adapter one process would; one MLflow run, one version."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigbertha.core.settings import Settings
from bigbertha.models import loading
from bigbertha.training import distributed, evaluate, finetune, promote
from tests.training.helpers import bigbertha_process, finetune_section, train_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# One process with batch 16 against two with 8 each: the same 16 examples an optimizer step.
STEPS, BATCH = 12, 16


def test_two_processes_train_the_adapter_one_process_trains(
    mlflow_server: Any, tiny_model: Path, task_data: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    single = train_settings(
        mlflow_server, tiny_model, task_data, tmp_path / "one", max_steps=STEPS, batch_size=BATCH
    )
    one = finetune.run(single, lineage={"workflow_name": "wf-one"})

    # The same settings as a user's config file; two processes of BATCH / 2.
    config = {
        "mlflow": single.mlflow.model_dump(mode="json"),
        "finetune": finetune_section(
            tiny_model, task_data, tmp_path / "two", max_steps=STEPS, batch_size=BATCH // 2
        ),
        "log": {"format": "json"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    report = tmp_path / "two.json"
    args = ["--config", str(tmp_path / "config.yaml"), "finetune", "--nproc-per-node", "2"]
    args += ["--report", str(report), "--workflow-name", "wf-two"]
    # OMP_NUM_THREADS: one thread per process, as torchrun sets by default.
    proc = bigbertha_process(args, {"OMP_NUM_THREADS": "1"}, tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    two = json.loads(report.read_text())

    # Both processes trained: torchrun started two ranks; one adapter, one result, from rank 0.
    assert two["processes"] == 2 and two["steps"] == STEPS and one.processes == 1
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()
    assert output.count('"adapter_model') == 0  # workers log; only the report holds the result
    # Comparable loss: each step averages the same number of examples, over a different split.
    assert abs(two["train_loss"] - one.train_loss) < 0.15 * one.train_loss, (two, one)
    # ... and an adapter as good: the held-out perplexity of both, against the untrained base's.
    base, ppl_one, ppl_two = (
        _perplexity(single, m) for m in (tiny_model, tmp_path / "one", tmp_path / "two")
    )
    assert ppl_one < 0.8 * base and ppl_two < 0.8 * base
    assert abs(ppl_two - ppl_one) < 0.15 * ppl_one, (ppl_one, ppl_two, base)

    # One MLflow run for the two processes, holding the averaged loss curve and the process count.
    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs(
        [client.get_experiment_by_name("bigbertha-retrain").experiment_id],
        filter_string="tags.workflow_name = 'wf-two'",
    )
    assert [r.info.run_id for r in runs] == [two["mlflow_run_id"]]
    assert runs[0].data.params["processes"] == "2"
    assert runs[0].data.params["global_batch_size"] == str(BATCH)
    losses = [m.value for m in client.get_metric_history(two["mlflow_run_id"], "loss")]
    assert len(losses) == 1 and losses[-1] > 0

    # ... and one registered version of it.
    settings = Settings(
        mlflow=single.mlflow.model_dump(), finetune={**config["finetune"], "output": ""}
    )
    version = promote.register(settings, str(tmp_path / "two"), {"workflow_name": "wf-two"})
    versions = client.search_model_versions(f"name = '{settings.mlflow.model_name}'")
    assert [v.version for v in versions] == [version]


def _perplexity(settings: Settings, model_ref: Path) -> float:
    """Perplexity of `model_ref` on the evaluation set (the task's rows)."""
    _, the_set = evaluate.load_eval_set(settings, None)
    examples = [p.example for p in evaluate.prepare(settings, the_set.items)]
    generated = evaluate.score(*loading.load_causal_lm(str(model_ref), settings)[:2], examples, 1)
    return math.exp(sum(generated.nll) / sum(generated.tokens))


def test_bad_data_stops_the_launcher_before_any_process_starts(
    mlflow_server: Any, tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    config = {"finetune": finetune_section(tiny_model, data, tmp_path / "out")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "config.yaml"), "finetune", "--nproc-per-node", "2"]
    proc = bigbertha_process(args, {}, tmp_path)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output  # final: the Workflow does not retry bad data
    assert "1 examples, need at least 8" in output
    assert "torchrun" not in output and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("env", "nproc", "expected"),
    [
        ({}, 4, ["--max-restarts", "0", "--standalone", "--nproc-per-node", "4"]),
        # A TrainJob pod: torchrun takes nodes, ranks and the master from the PET_* variables.
        ({"PET_NNODES": "2", "PET_MASTER_ADDR": "j-node-0-0.j"}, 1, ["--max-restarts", "0"]),
    ],
)
def test_the_launcher_runs_one_node_alone_or_joins_a_trainjob(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], nproc: int, expected: list[str]
) -> None:
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "PET_NNODES", "PET_MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.needs_launch(nproc)
    args = distributed.launcher_args(nproc, ["finetune", "--data", "d.jsonl"])
    assert args == [*expected, "--module", "bigbertha", "finetune", "--data", "d.jsonl"]
    # A worker torchrun started trains; it does not launch again.
    for name, value in {"LOCAL_RANK": "0", "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert not distributed.needs_launch(nproc) and not distributed.is_main()
    assert os.environ["WORLD_SIZE"] == "2" and distributed.world_size() == 2
