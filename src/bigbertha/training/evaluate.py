"""Benchmark a model on a held-out set: perplexity, answer quality and generation throughput.

    bigbertha evaluate --model s3://runs/wf-1/adapter --data s3://datasets/eval.jsonl \\
        --report s3://runs/wf-1/eval-challenger.json

The evaluation set uses the training data's formats (see `training_data`); RAG rows
(``question``, ``context``, ``reference``) are prompted exactly as the chatbot prompts. Metrics:
- ``perplexity``: exp of the mean negative log-likelihood of the reference answer tokens given
  the prompt (teacher forcing; lower is better);
- ``token_f1`` and ``rouge_l``: the greedy answer against the reference (SQuAD-style token F1,
  ROUGE-L F-measure over the same normalised tokens; higher is better);
- ``tokens_per_second``: generated tokens per second of generation, answers generated
  `score`'s batch at a time (higher is better).
The report (JSON) names the model, its version, the evaluation set's hash and the metrics; the
same numbers are logged to an MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError
from bigbertha.models import loading, registry, tracking
from bigbertha.training import data as training_data

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"perplexity"}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass
class EvalReport:
    """One model's benchmark on one evaluation set."""

    model: str
    version: str
    eval_data: str
    eval_hash: str
    examples: int
    metrics: dict[str, float]
    mlflow_run_id: str | None = None
    samples: list[dict[str, str]] = field(default_factory=list)  # a few answers, for people

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def normalize(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation, no articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of normalised tokens)."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    prev = [0] * (len(ref) + 1)
    for p in pred:
        cur = [0]
        for j, r in enumerate(ref, start=1):
            cur.append(prev[j - 1] + 1 if p == r else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _encode(tokenizer: Any, example: training_data.Example) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt) and of prompt + reference answer."""
    prompt = tokenizer.apply_chat_template(
        example["prompt"], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites the prompt: append the answer
        full = prompt + example["completion"][0]["content"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return prompt_ids, full_ids


def score(
    model: Any,
    tokenizer: Any,
    examples: Sequence[training_data.Example],
    max_new_tokens: int,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """The metrics of `model` on `examples`, and the first few generated answers.

    Examples go through the model `batch_size` at a time: one step of greedy decoding reads
    every weight once however many sequences it extends, so on a CPU a batch of 8 answers costs
    little more than one. Padding is masked out (answers left-padded, as generate() needs), so
    each example scores as it would alone.
    """
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _stop_ids(model, tokenizer)
    nll, scored_tokens = 0.0, 0
    f1s: list[float] = []
    rouges: list[float] = []
    samples: list[dict[str, str]] = []
    generated, gen_seconds = 0, 0.0
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(examples), batch_size):
            batch = examples[first : first + batch_size]
            encoded = [_encode(tokenizer, example) for example in batch]
            # Perplexity of each reference answer given its prompt (right-padded, masked).
            width = max(len(full) for _, full in encoded)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for row, (prompt_ids, full_ids) in enumerate(encoded):
                ids[row, : len(full_ids)] = torch.tensor(full_ids)
                mask[row, : len(full_ids)] = 1
                labels[row, len(prompt_ids) : len(full_ids)] = torch.tensor(
                    full_ids[len(prompt_ids) :]
                )
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            # Token t is predicted from position t-1 (what the model's own loss does).
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2),
                labels[:, 1:].to(device),
                ignore_index=-100,
                reduction="sum",
            )
            nll += float(losses)
            scored_tokens += int((labels[:, 1:] != -100).sum())
            # Greedy answers, timed (left-padded prompts).
            width = max(len(prompt_ids) for prompt_ids, _ in encoded)
            prompts = torch.full((len(batch), width), pad, dtype=torch.long)
            prompt_mask = torch.zeros_like(prompts)
            for row, (prompt_ids, _) in enumerate(encoded):
                prompts[row, width - len(prompt_ids) :] = torch.tensor(prompt_ids)
                prompt_mask[row, width - len(prompt_ids) :] = 1
            t0 = time.perf_counter()
            out = model.generate(
                input_ids=prompts.to(device),
                attention_mask=prompt_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            gen_seconds += time.perf_counter() - t0
            for example, row in zip(batch, out[:, width:].tolist(), strict=True):
                new = _until_stop(row, stops)
                generated += len(new)
                answer = tokenizer.decode(new, skip_special_tokens=True).strip()
                reference = example["completion"][0]["content"]
                f1s.append(token_f1(answer, reference))
                rouges.append(rouge_l(answer, reference))
                if len(samples) < 5:
                    samples.append({"answer": answer, "reference": reference})
    metrics = {
        "perplexity": math.exp(nll / scored_tokens) if scored_tokens else float("inf"),
        "token_f1": sum(f1s) / len(f1s),
        "rouge_l": sum(rouges) / len(rouges),
        "tokens_per_second": generated / gen_seconds if gen_seconds else 0.0,
    }
    return metrics, samples


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end an answer (generation config's eos ids, else the tokenizer's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    """A generated row up to and with its first stop token (what follows is padding)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


def load_eval_set(settings: Settings, uri: str | None) -> tuple[str, list[training_data.Example]]:
    """(uri, examples) of the evaluation set; malformed rows are reported and skipped."""
    uri = uri or settings.evaluate.data
    if not uri:
        raise ConfigError("no evaluation set: pass --data or set evaluate.data")
    examples, rejected = training_data.parse_jsonl(storage.read_bytes(settings, uri), uri)
    for line in rejected:
        log.warning("evaluation data: skipped %s", line)
    if not examples:
        raise training_data.DatasetTooSmall(f"evaluation set {uri}: no usable examples")
    return uri, examples[: settings.evaluate.max_examples]


def run(
    settings: Settings,
    model_ref: str,
    *,
    data: str | None = None,
    report: str | None = None,
    tags: Mapping[str, str] | None = None,
    eval_set: tuple[str, list[training_data.Example]] | None = None,
) -> EvalReport:
    """Benchmark `model_ref`; log to MLflow and write the JSON report (path or s3://).

    `eval_set`: what `load_eval_set` returned, for a caller that benchmarks several models on
    one set (the gate) and reads it once.
    """
    import mlflow

    tracking.bound_client_retries(settings)
    uri, examples = eval_set or load_eval_set(settings, data)
    model, tokenizer, version = loading.load_causal_lm(model_ref, settings)
    metrics, samples = score(model, tokenizer, examples, settings.evaluate.max_new_tokens)
    result = EvalReport(
        model=model_ref,
        version=version,
        eval_data=uri,
        eval_hash=training_data.dataset_hash(examples),
        examples=len(examples),
        metrics=metrics,
        samples=samples,
    )
    with registry.mlflow_errors(settings):
        registry.client(settings)
        mlflow.set_experiment(registry.EXPERIMENT)
    with mlflow.start_run(run_name=f"evaluate-{version}", tags=tracking.owner_tags()) as run:
        mlflow.set_tags({"step": "evaluate", "model": model_ref, "model_version": version})
        mlflow.set_tags({k: v for k, v in (tags or {}).items() if v})
        mlflow.log_params(
            {"eval_data": uri, "eval_hash": result.eval_hash, "examples": len(examples)}
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        result.mlflow_run_id = run.info.run_id
        mlflow.log_dict(result.to_json(), "eval_report.json")
    log.info("evaluated %s (version %s): %s", model_ref, version, _fmt(metrics))
    target = report or settings.evaluate.report
    if target:
        storage.write_bytes(settings, target, json.dumps(result.to_json(), indent=2).encode())
    return result


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
