"""Supervised fine-tuning with a LoRA adapter (QLoRA when quantisation is on).

    bigbertha finetune --data s3://runs/wf-1/data.jsonl --output s3://runs/wf-1/adapter \\
        --alert-name BigBerthaNegativeFeedbackHigh --workflow-name wf-1

`run(settings)` reads top to bottom like trl's ``sft.py``: load the training file prepare-data
wrote, as written (`training.data.load`: its hash checked against its manifest, nothing rebuilt
and no feedback read again; a file too small stops the run early), load the base model (4-bit
NF4 with double quantisation and `prepare_model_for_kbit_training` when quantising), train
with trl's SFTTrainer and a peft LoRA adapter, save the adapter with its lineage
(``bigbertha.json``), optionally merged weights, and publish it to ``finetune.output`` (a path
or an s3:// prefix). Parameters, the loss
curve and system metrics go to an MLflow run in the ``bigbertha-retrain`` experiment.

Under torchrun (`training.distributed`: ``--nproc-per-node`` above 1, or a TrainJob) every process
runs `run` on its share of each batch (DDP; gloo on CPU, NCCL on GPUs, one GPU per process, each
with a whole copy of the 4-bit base); process 0 alone logs, saves and publishes. ``batch_size``
is per process: a step trains on batch_size x gradient_accumulation_steps x processes examples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError
from bigbertha.models import loading, registry, tracking
from bigbertha.training import data as training_data
from bigbertha.training import distributed

if TYPE_CHECKING:
    from bigbertha.core.settings import FinetuneSettings, Settings

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced (also the lineage written beside the adapter)."""

    output: str  # where the adapter was published
    base_model: str  # portable reference of the base (a registry alias is pinned to a version)
    base_version: str
    dataset_hash: str  # SHA-256 of the training file's bytes: the manifest's hash
    examples: int
    data: str  # the training file
    quantized: bool
    steps: int
    train_loss: float
    seconds: float
    steps_per_second: float
    processes: int = 1  # data-parallel processes (GPUs) that trained it, on every node
    mlflow_run_id: str | None = None
    merged: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # alert_name, alert_labels, workflow

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def use_quantization(setting: str) -> bool:
    """auto: 4-bit on a GPU only; 4bit: always (bitsandbytes also runs on CPU); none: never."""
    if setting == "auto":
        import torch

        return bool(torch.cuda.is_available())
    return setting == "4bit"


def lora_config(s: FinetuneSettings) -> Any:
    """The peft LoRA adapter trained on top of the (frozen) base."""
    from peft import LoraConfig

    targets: str | list[str] = (
        "all-linear" if s.target_modules == ["all-linear"] else list(s.target_modules)
    )
    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def checkpointing(s: FinetuneSettings) -> bool:
    """Whether to recompute activations in the backward pass (auto: only on a GPU)."""
    import torch

    return s.gradient_checkpointing == "on" or (
        s.gradient_checkpointing == "auto" and torch.cuda.is_available()
    )


def sft_config(s: FinetuneSettings, output_dir: Path, *, report_to: Sequence[str]) -> Any:
    """trl's SFTConfig from settings: bf16 only on a GPU that has it, fp32 on CPU; activation
    checkpointing as `gradient_checkpointing` says (auto: only on a GPU)."""
    import torch
    from trl import SFTConfig

    gpu = torch.cuda.is_available()
    parallel = distributed.world_size() > 1
    return SFTConfig(
        gradient_checkpointing=checkpointing(s),
        output_dir=str(output_dir),
        learning_rate=s.learning_rate,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_length=s.max_seq_length,
        seed=s.seed,
        logging_steps=s.logging_steps,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        fp16=False,
        use_cpu=not gpu,
        save_strategy="no",
        report_to=list(report_to),
        completion_only_loss=True,
        dataset_num_proc=None,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        # DDP: NCCL between GPUs, gloo between CPU processes; a frozen base leaves no parameter
        # unused, so DDP need not search the graph for them each step.
        ddp_backend=("nccl" if gpu else "gloo") if parallel else None,
        ddp_find_unused_parameters=False if parallel else None,
        # Re-entrant checkpointing and DDP's gradient hooks do not mix (torch.utils.checkpoint).
        gradient_checkpointing_kwargs={"use_reentrant": False} if parallel else None,
    )


def build_trainer(
    model: Any,
    tokenizer: Any,
    examples: list[training_data.Example],
    s: FinetuneSettings,
    output_dir: Path,
    *,
    quantized: bool,
    report_to: Sequence[str] = ("mlflow",),
) -> Any:
    """An SFTTrainer with a LoRA adapter over `model` (prepared for k-bit training if 4-bit)."""
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing(s))
    return SFTTrainer(
        model=model,
        args=sft_config(s, output_dir, report_to=report_to),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=lora_config(s),
    )


def _portable_base(ref: str, version: str, settings: Settings) -> str:
    """Pin a registry alias to the version actually trained on, so lineage never drifts."""
    if ref.startswith("models:/") and "@" in ref:
        return f"models:/{ref[len('models:/') :].split('@')[0]}/{version}"
    return ref


def training_file(settings: Settings, data: str | None) -> str:
    """The one file to train on: `data`, else the single ``finetune.data`` entry."""
    if data:
        return data
    if len(settings.finetune.data) != 1:
        raise ConfigError(
            f"finetune trains on one file, prepare-data's output; got {len(settings.finetune.data)}"
            " in finetune.data: pass --data <prepare-data --output>"
        )
    return settings.finetune.data[0]


def check_data(settings: Settings, data: str | None) -> None:
    """Refuse a bad or too small training file (`training.data.load`'s errors), loading no model."""
    training_data.load(settings, training_file(settings, data))


def run(
    settings: Settings,
    *,
    data: str | None = None,
    lineage: Mapping[str, str] | None = None,
    report: str | None = None,
) -> FinetuneResult:
    """Fine-tune `finetune.base_model` on the data; publish the adapter to `finetune.output`."""
    import mlflow
    from peft import PeftModel

    s = settings.finetune
    started = time.monotonic()
    main, processes = distributed.is_main(), distributed.world_size()
    tracking.bound_client_retries(settings)
    # 1. Data first: a bad or tiny file must stop the run before a model is loaded.
    dataset = training_data.load(settings, training_file(settings, data))

    # 2. Base model (an adapter base is merged in: LoRA trains on a plain model).
    quantized = use_quantization(s.quantize)
    if processes > 1:
        import torch

        if torch.cuda.is_available():  # each process loads its copy of the base onto its GPU
            torch.cuda.set_device(distributed.local_rank())
    model, tokenizer, base_version = loading.load_causal_lm(
        s.base_model, settings, quantize=quantized
    )
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    base_ref = _portable_base(s.base_model, base_version, settings)

    workdir = Path(tempfile.mkdtemp(prefix="bigbertha-finetune-"))
    try:
        # 3. Train, with parameters, the loss curve and system metrics in one MLflow run (process
        #    0's: the trainer logs the loss averaged over every process).
        run_context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if main:
            with registry.mlflow_errors(settings):  # unreachable: a clear error before training
                registry.client(settings)
                mlflow.set_experiment(registry.EXPERIMENT)
            run_name = f"finetune-{(lineage or {}).get('workflow_name') or 'local'}"
            run_context = mlflow.start_run(
                run_name=run_name, log_system_metrics=True, tags=tracking.owner_tags()
            )
        with run_context as mlflow_run:
            if main:
                _log_inputs(dataset, base_ref, quantized, processes, s, lineage)
            trainer = build_trainer(
                model,
                tokenizer,
                dataset.examples,
                s,
                workdir / "trainer",
                quantized=quantized,
                report_to=("mlflow",) if main else (),
            )
            output = trainer.train()
            steps = int(output.global_step)
            seconds = float(output.metrics.get("train_runtime", 0.0))
            result = FinetuneResult(
                output=s.output,
                base_model=base_ref,
                base_version=base_version,
                dataset_hash=dataset.hash,
                examples=len(dataset.examples),
                data=dataset.uri,
                quantized=quantized,
                steps=steps,
                train_loss=float(output.training_loss),
                seconds=seconds,
                steps_per_second=steps / seconds if seconds else 0.0,
                processes=processes,
                mlflow_run_id=mlflow_run.info.run_id if main else None,
                lineage={k: v for k, v in (lineage or {}).items() if v},
            )
            if not main:  # process 0 saves and publishes the one adapter
                return result

            # 4. Save the adapter, its tokenizer and lineage; optionally merged weights.
            adapter_dir = workdir / "adapter"
            trainer.save_model(str(adapter_dir))
            tokenizer.save_pretrained(adapter_dir)
            lineage_doc = {**result.to_json(), **result.lineage}
            (adapter_dir / loading.LINEAGE_FILE).write_text(json.dumps(lineage_doc, indent=2))
            if s.merge:
                merged = loading.save_merged(trainer.model, tokenizer, workdir / "merged")
                result.merged = s.output.rstrip("/") + "/merged"
                storage.upload_path(settings, merged, result.merged)
            mlflow.log_dict(lineage_doc, "lineage.json")

            # 5. Publish: the next workflow step reads it from here.
            storage.upload_path(settings, adapter_dir, s.output)
        log.info(
            "fine-tuned %s: %d steps, loss %.4f, adapter at %s (%.0fs)",
            base_ref,
            steps,
            result.train_loss,
            s.output,
            time.monotonic() - started,
        )
        if report:
            storage.write_bytes(settings, report, json.dumps(result.to_json(), indent=2).encode())
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _log_inputs(
    dataset: training_data.Prepared,
    base_ref: str,
    quantized: bool,
    processes: int,
    s: FinetuneSettings,
    lineage: Mapping[str, str] | None,
) -> None:
    """What the run trained on and how, on its MLflow run."""
    import mlflow

    mlflow.set_tags(
        {
            "step": "finetune",
            "base_model": base_ref,
            "dataset_hash": dataset.hash,
            "data": dataset.uri,
            **{k: v for k, v in (lineage or {}).items() if v},
        }
    )
    mlflow.log_params(
        {
            "examples": len(dataset.examples),
            "quantized": quantized,
            "lora_target_modules": ",".join(s.target_modules),
            "processes": processes,
            "global_batch_size": s.batch_size * s.gradient_accumulation_steps * processes,
        }
    )
    training_data.log_card(dataset)
