"""Benchmark: training steps per second of `bigbertha finetune` against a bare trl SFT script.

    .venv/bin/python bench/finetune.py [--steps 60] [--rounds 2]

Both train the same tiny random Llama (built in code) on the same data with the same LoRA
hyperparameters, in this process, alternating rounds so machine noise hits both alike:
- ours: `finetune.run` end to end (data checks, MLflow run with the loss curve and system
  metrics, adapter save); its speed is the trainer's own steps/s (train_runtime);
- baseline: trl's documented minimal SFT script (SFTTrainer + peft LoraConfig, report_to none).
The ratio is ours / baseline (aim: >= 0.9). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FACTS = [
    ("apple", "red"),
    ("sky", "blue"),
    ("grass", "green"),
    ("sun", "yellow"),
    ("night", "black"),
    ("snow", "white"),
    ("carrot", "orange"),
    ("grape", "purple"),
]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}


def rows() -> list[dict[str, str]]:
    return [
        {"prompt": f"what color is the {t} number {i} ?", "completion": f"the {t} is {c}"}
        for i in range(8)
        for t, c in FACTS
    ]


def bare_trl(model_dir: Path, data: Path, steps: int, out: Path) -> float:
    """trl's minimal SFT script (trl/scripts/sft.py, stripped to its essentials)."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(data), split="train")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        learning_rate=1e-2,
        max_length=128,
        logging_steps=10,
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        lr_scheduler_type="cosine",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA),
    )
    result = trainer.train()
    return float(result.global_step / result.metrics["train_runtime"])


def ours(model_dir: Path, data: Path, steps: int, out: Path) -> float:
    from bigbertha import finetune
    from bigbertha.settings import Settings

    settings = Settings(
        mlflow={"tracking_uri": f"sqlite:///{out.parent / 'mlflow.db'}"},
        finetune={
            "base_model": str(model_dir),
            "data": [str(data)],
            "output": str(out),
            "feedback_examples": 0,
            "min_examples": 8,
            "quantize": "none",
            "target_modules": ["all-linear"],
            "lora_r": LORA["r"],
            "lora_alpha": LORA["lora_alpha"],
            "lora_dropout": LORA["lora_dropout"],
            "learning_rate": 1e-2,
            "max_steps": steps,
            "batch_size": 16,
            "gradient_accumulation_steps": 1,
            "max_seq_length": 128,
            "logging_steps": 10,
        },
    )
    return finetune.run(settings).steps_per_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    args = parser.parse_args()

    import logging

    import torch

    from bigbertha import models, training_data

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    # Both train on the exact JSONL `bigbertha prepare-data` writes (conversational prompt and
    # completion), so they tokenise the same chat-formatted examples.
    data = work / "data.jsonl"
    data.write_bytes(
        training_data.Dataset([training_data.to_example(r) for r in rows()]).to_jsonl()
    )
    corpus = [f"{r['prompt']} {r['completion']}" for r in rows()] + ["user assistant :"]
    model_dir = models.tiny_llama(work / "tiny", corpus)

    # Warm-up (imports, kernels) on both paths, then alternating timed rounds.
    bare_trl(model_dir, data, 5, work / "warm-bare")
    ours(model_dir, data, 5, work / "warm-ours")
    bare_rates, our_rates = [], []
    for n in range(args.rounds):
        bare_rates.append(bare_trl(model_dir, data, args.steps, work / f"bare-{n}"))
        our_rates.append(ours(model_dir, data, args.steps, work / f"ours-{n}"))
        print(
            f"round {n + 1}: bare trl {bare_rates[-1]:.2f} steps/s, "
            f"bigbertha finetune {our_rates[-1]:.2f} steps/s",
            file=sys.stderr,
        )
    bare, mine = statistics.median(bare_rates), statistics.median(our_rates)
    result = {
        "benchmark": "finetune_cpu_steps_per_second",
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "bare_trl_steps_per_second": round(bare, 3),
        "bigbertha_steps_per_second": round(mine, 3),
        "ratio": round(mine / bare, 3),
        "aim": 0.9,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
