"""Benchmark: training steps per second of `bigbertha finetune` against a bare trl SFT script.

    .venv/bin/python bench/finetune.py [--steps 60] [--rounds 2] [--quick]

Both train the same tiny random Llama (built in code) on the same data with the same LoRA
hyperparameters, in this process, alternating rounds so machine noise hits both alike:
- ours: `finetune.run` end to end (data checks, MLflow run with the loss curve and system
  metrics, adapter save); its speed is the trainer's own steps/s (train_runtime);
- baseline: trl's documented minimal SFT script (SFTTrainer + peft LoraConfig, report_to none).
The ratio is ours / baseline (aim: >= 0.9). The last line printed is one JSON object.

With a CUDA GPU, `--gpu` also compares QLoRA (4-bit NF4 + double quantisation, prepared for
k-bit training as `finetune` does) with 16-bit LoRA on a SmolLM2-135M-shaped Llama: peak GPU
memory and training tokens per second, and prints both ratios (`--gpu-only` skips the CPU part,
for a machine without trl).
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

# The tests' tiny task and training settings (tests/), imported so the two cannot drift apart.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.helpers import task_rows, tiny_corpus  # noqa: E402
from tests.training.helpers import finetune_section  # noqa: E402

# The bare trl baseline's LoRA: the same as finetune_section's (rank 8, alpha 16, all-linear).
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}


def rows() -> list[dict[str, str]]:
    """The task's rows, each asked four ways: 64 distinct examples, four batches of 16."""
    return [
        {"prompt": r["prompt"].replace(" ?", f" number {i} ?"), "completion": r["completion"]}
        for i in range(4)
        for r in task_rows()
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
    from bigbertha.core.settings import Settings
    from bigbertha.training import finetune

    settings = Settings(
        mlflow={"tracking_uri": f"sqlite:///{out.parent / 'mlflow.db'}"},
        finetune=finetune_section(
            model_dir,
            data,
            out,
            lora_dropout=LORA["lora_dropout"],
            max_steps=steps,
            max_seq_length=128,
        ),
    )
    return finetune.run(settings).steps_per_second


def gpu_lora(quantized: bool, steps: int, batch: int, seq: int) -> dict[str, float]:
    """Peak memory and tokens/s of LoRA training on a SmolLM2-135M-shaped model (random init)."""
    import time

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from bigbertha.models import loading

    config = LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    path = Path(tempfile.gettempdir()) / "bench-smollm2-shape"
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if quantized:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=loading.quantization_config(True), dtype=torch.bfloat16
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "tokens_per_second": steps * batch * seq / seconds,
    }
    return result


def gpu_compare(steps: int) -> dict[str, object]:
    import torch

    qlora = gpu_lora(True, steps, batch=16, seq=512)
    torch.cuda.empty_cache()
    lora16 = gpu_lora(False, steps, batch=16, seq=512)
    out = {
        "gpu": torch.cuda.get_device_name(0),
        "qlora_peak_gib": round(qlora["peak_gib"], 3),
        "lora16_peak_gib": round(lora16["peak_gib"], 3),
        "qlora_tokens_per_second": round(qlora["tokens_per_second"]),
        "lora16_tokens_per_second": round(lora16["tokens_per_second"]),
        "memory_ratio_qlora_vs_lora16": round(qlora["peak_gib"] / lora16["peak_gib"], 3),
        "throughput_ratio_qlora_vs_lora16": round(
            qlora["tokens_per_second"] / lora16["tokens_per_second"], 3
        ),
    }
    print(f"GPU: {out}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both")
    parser.add_argument("--gpu", action="store_true", help="also QLoRA vs 16-bit LoRA on a GPU")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU comparison")
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args()
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(steps=6, rounds=1)
        args = parser.parse_args()
    if args.gpu_only:
        print(json.dumps({"benchmark": "finetune_gpu_qlora_vs_lora16", **gpu_compare(20)}))
        return 0

    import logging

    import torch

    from bigbertha.local.tiny_llama import tiny_llama
    from bigbertha.training import data as training_data

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    # Both train on the exact JSONL `bigbertha prepare-data` writes (conversational prompt and
    # completion), so they tokenise the same chat-formatted examples.
    data = work / "data.jsonl"
    data.write_bytes(
        training_data.Dataset([training_data.to_example(r) for r in rows()]).to_jsonl()
    )
    model_dir = tiny_llama(work / "tiny", tiny_corpus(*(r["prompt"] for r in rows())))

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
    if args.gpu:
        import torch

        if torch.cuda.is_available():
            result.update(gpu_compare(20))
        else:
            result["gpu"] = "none"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
