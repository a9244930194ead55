"""Fixtures of the training tests: one torch thread, and one trained adapter per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core.settings import Settings
from bigbertha.training import finetune
from tests.training.helpers import train_settings


@pytest.fixture(scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and far faster on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_adapter(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: Any,
    tiny_model: Path,
    task_data: Path,
    one_torch_thread: None,
) -> tuple[Path, finetune.FinetuneResult, Settings]:
    """The adapter the finetune, promotion and retrain tests share (trained once)."""
    output = tmp_path_factory.mktemp("finetune") / "adapter"
    settings = train_settings(mlflow_server, tiny_model, task_data, output)
    lineage = {"alert_name": "BigBerthaNegativeFeedbackHigh", "workflow_name": "wf-test"}
    result = finetune.run(settings, lineage=lineage)
    return output, result, settings
