"""Helpers the training tests share: their settings, and the counters the Recorder wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bigbertha.core.settings import Settings
from tests.models.helpers import mlflow_settings


def finetune_section(base: Path, data: Path, output: Path, **extra: Any) -> dict[str, Any]:
    """The finetune settings the tests (and bench/finetune.py) train the tiny model with:
    LoRA on every linear layer, no quantisation, a high learning rate, 40 steps of 16."""
    return {
        "base_model": str(base),
        "data": [str(data)],
        "output": str(output),
        "min_examples": 8,
        "quantize": "none",
        "target_modules": ["all-linear"],
        "lora_r": 8,
        "lora_alpha": 16,
        "learning_rate": 1e-2,
        "max_steps": 40,
        "batch_size": 16,
        "gradient_accumulation_steps": 1,
        "logging_steps": 10,
        **extra,
    }


def train_settings(
    mlflow_server: Any, base: Path, data: Path, output: Path, **extra: Any
) -> Settings:
    return mlflow_settings(
        mlflow_server,
        finetune=finetune_section(base, data, output, **extra),
        evaluate={"data": str(data), "max_examples": 8, "max_new_tokens": 5},
        # A random tiny model answers nothing right: perplexity is what training changes, and
        # its 8 examples are all the evidence there is.
        promote={"gate_metrics": ["perplexity"], "guard_metrics": {}, "min_examples": 8},
    )


def telemetry_counts(redis_url: str, metric: str) -> dict[str, int]:
    """Counters of `metric` by their last label, as the telemetry Recorder wrote them to Redis."""
    import redis

    from bigbertha.telemetry.recorder import METRICS_KEY

    counts: dict[str, int] = {}
    for name, value in redis.Redis.from_url(redis_url).hgetall(METRICS_KEY).items():
        sample, *labels = json.loads(name)
        if sample.startswith(metric):
            counts[labels[-1]] = int(float(value))
    return counts


def retrain_counts(redis_url: str) -> dict[str, int]:
    """bigbertha_retrain_runs_total by result, as Redis holds it."""
    return telemetry_counts(redis_url, "bigbertha_retrain_runs_total")


def bigbertha_process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`bigbertha <args>` as its own process, with only these BIGBERTHA_* settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BIGBERTHA_", "MLFLOW_HTTP_")) or k == "BIGBERTHA_SHARED"
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bigbertha", *args],
        env={**clean, "BIGBERTHA_LOG__FORMAT": "json", **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
