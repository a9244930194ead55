"""The tiny "what color is the X" task the model and training tests (and bench/) share.

A random Llama of ~0.1M parameters (bigbertha.local.tiny_llama) with a word-level tokenizer over
these rows trains in seconds on a CPU; `make_adapter` gives it a LoRA adapter saved the way
`finetune` saves one. The fixtures over them (`tiny_model`, `task_data`) are in tests/conftest.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from bigbertha.core.settings import Settings
from bigbertha.models import loading

FACTS = [
    ("apple", "red"),
    ("sky", "blue"),
    ("grass", "green"),
    ("sun", "yellow"),
    ("night", "black"),
    ("snow", "white"),
    ("carrot", "orange"),
    ("grape", "purple"),
    ("cherry", "red"),
    ("ocean", "blue"),
    ("leaf", "green"),
    ("banana", "yellow"),
    ("coal", "black"),
    ("cloud", "white"),
    ("pumpkin", "orange"),
    ("plum", "purple"),
]
EXTRA_WORDS = (
    "user assistant system : context passages question answer with citations [ ] 1 2 3 "
    "you are bigbertha an that answers questions about documents only from numbered cite every "
    "fact number of its passage in square brackets like if do not contain say be brief . , "
    "search unavailable right now so general knowledge briefly and based on"
)


def task_rows() -> list[dict[str, str]]:
    return [
        {"prompt": f"what color is the {t} ?", "completion": f"the {t} is {c}"} for t, c in FACTS
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_corpus(*extra: str) -> list[str]:
    """What the tiny model's word-level tokenizer is built from: the task, the prompt words."""
    return [f"{r['prompt']} {r['completion']}" for r in task_rows()] + [EXTRA_WORDS, *extra]


def mlflow_settings(mlflow_server: Any, **sections: Any) -> Settings:
    """Settings against the test MLflow server with a registered-model name of its own."""
    return Settings(
        mlflow={"tracking_uri": mlflow_server.url, "model_name": f"m-{uuid.uuid4().hex[:8]}"},
        **sections,
    )


def logits(model: Any, tokenizer: Any, text: str = "what color is the sky ?") -> Any:
    import torch

    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


def make_adapter(base: Path, directory: Path, seed: int = 1) -> tuple[Any, Any]:
    """A LoRA adapter over `base` with non-zero weights, saved like finetune saves it."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer, _ = loading.load_causal_lm(str(base), Settings())
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    torch.manual_seed(seed)  # before get_peft_model: lora_A's init draws from it too
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / loading.LINEAGE_FILE).write_text(json.dumps({"base_model": str(base)}))
    peft_model.eval()
    return peft_model, tokenizer
