"""Benchmark a model on the evaluation set of record, retrieving as the chatbot retrieves.

    bigbertha evaluate --model s3://runs/wf-1/adapter --report s3://runs/wf-1/evaluation.json

The set is ``evaluate.golden`` plus ``--data`` (`bigbertha.training.evalset`). For each question
the gate retrieves from Milvus exactly as the chatbot does (`Retriever.retrieve`: same top-k,
cut-off and search) and builds the prompt with the chatbot's builder (`prompts.build_messages`
over `prompts.passages_of`); rows in the training formats keep their own prompt. Then:
- ``perplexity``: exp of the mean negative log-likelihood of the reference answer tokens given
  the retrieved prompt (teacher forcing; lower is better);
- the greedy answer's ``token_f1``, ``rouge_l``, ``groundedness``, ``citation_correctness``,
  ``abstention`` and ``completeness`` (`bigbertha.training.metrics`), ``answer_relevancy``
  (cosine of question and answer with the embedding model retrieval uses), and the retrieval's
  ``hit_at_k`` and ``mrr`` against the gold sections;
- ``tokens_per_second``: generated tokens per second of generation, `score`'s batch at a time.
The report (JSON) names the model, its version, the set and its hash, the aggregate metrics and
every example's scores (the gate pairs them, `bigbertha.training.comparison`); the metrics and
the set (MLflow dataset tracking) go to an MLflow run whose artifact is the report. A registered
version already scored on the same prompts with the same settings is not scored again: its
report is read back from that run (`cached_report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.models import loading, registry, tracking
from bigbertha.models.prompts import build_messages, passages_of
from bigbertha.training import data as training_data
from bigbertha.training import evalset, metrics
from bigbertha.training.comparison import LOWER_IS_BETTER
from bigbertha.training.metrics import normalize, rouge_l, token_f1

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

__all__ = ["LOWER_IS_BETTER", "EvalReport", "normalize", "rouge_l", "run", "token_f1"]

log = logging.getLogger(__name__)

#: Bumped when a metric's definition changes: older cached scores are then not reused.
SCORES_VERSION = "2"
PER_EXAMPLE = (
    "token_f1",
    "rouge_l",
    "hit_at_k",
    "mrr",
    "groundedness",
    "citation_correctness",
    "answer_relevancy",
    "abstention",
    "completeness",
)


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
    scores: list[dict[str, Any]] = field(default_factory=list)  # every example's, for the gate
    key: str = ""  # what produced the scores (`score_key`)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no NaN: a metric that applies to no example is left out.
        data["metrics"] = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        data["scores"] = [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in self.scores
        ]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Prepared:
    """One evaluation item with the prompt the model answers and what retrieval found."""

    item: evalset.Item
    example: training_data.Example
    passages: list[str] | None = None  # retrieved passage texts; None: a handed-in prompt
    hits: list[bool] | None = None  # per retrieved chunk: is it a gold section


def prepare(settings: Settings, items: Sequence[evalset.Item]) -> list[Prepared]:
    """Each item's prompt: retrieved as the chatbot retrieves (RetrievalUnavailable, exit 69,
    when Milvus cannot be searched: a gate without retrieval would judge another system)."""
    prepared = []
    retriever = None
    for item in items:
        completion = [{"role": "assistant", "content": item.reference}]
        if item.prompt is not None:
            example = {"prompt": list(item.prompt), "completion": completion}
            passages = None
            for message in item.prompt:  # handed-in passages still ground the answer
                if message["role"] == "user" and message["content"].startswith("Context"):
                    passages = [message["content"]]
            prepared.append(Prepared(item, example, passages))
            continue
        if retriever is None:
            from bigbertha.documents.retrieval import Retriever

            retriever = Retriever(settings)
        assert item.question is not None
        chunks = retriever.retrieve(item.question)
        example = {
            "prompt": build_messages(item.question, passages_of(chunks)),
            "completion": completion,
        }
        gold = [{"document": d, "section": s} for d, s in item.gold]
        hits = [metrics.is_gold(c.file_name, c.section, gold) for c in chunks] if gold else None
        prepared.append(Prepared(item, example, [c.text for c in chunks], hits))
    return prepared


def prompts_hash(prepared: Sequence[Prepared]) -> str:
    """What the model is asked: the same hash means the same prompts and references."""
    return training_data.dataset_hash(p.example for p in prepared)


def score_key(settings: Settings, model_ref: str, prepared: Sequence[Prepared]) -> str:
    """Everything the per-example scores depend on besides the model's weights."""
    parts = {
        "model": model_ref,
        "prompts": prompts_hash(prepared),
        "max_new_tokens": settings.evaluate.max_new_tokens,
        "nli_model": settings.evaluate.nli_model or "",
        "embeddings": settings.embeddings.model,
        "scores_version": SCORES_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


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


@dataclass
class Generated:
    """What the model did on each example, in order."""

    answers: list[str]
    nll: list[float]  # summed negative log-likelihood of the reference's tokens
    tokens: list[int]  # how many reference tokens were scored
    generated: int = 0
    seconds: float = 0.0


def score(
    model: Any,
    tokenizer: Any,
    examples: Sequence[training_data.Example],
    max_new_tokens: int,
    batch_size: int = 8,
) -> Generated:
    """Each example's greedy answer and the reference's negative log-likelihood.

    Examples go through the model `batch_size` at a time: one step of greedy decoding reads
    every weight once however many sequences it extends, so on a CPU a batch of 8 answers costs
    little more than one. Padding is masked out (prompts left-padded, as generate() needs), so
    each example scores as it would alone.
    """
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = _stop_ids(model, tokenizer)
    out_ = Generated([], [], [])
    model.eval()
    with torch.inference_mode():
        for first in range(0, len(examples), batch_size):
            batch = examples[first : first + batch_size]
            encoded = [_encode(tokenizer, example) for example in batch]
            # One pass over prompt + reference: prompts left-padded to a common end, answers
            # right-padded after it. It scores the reference (teacher forcing) and leaves the
            # prompts' key/value cache, which greedy decoding then continues from: the long
            # retrieved prompts are read once, not once for the likelihood and again to answer.
            width = max(len(prompt_ids) for prompt_ids, _ in encoded)
            tail = max(len(full) - len(prompt_ids) for prompt_ids, full in encoded)
            ids = torch.full((len(batch), width + tail), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for row, (prompt_ids, full_ids) in enumerate(encoded):
                start = width - len(prompt_ids)
                ids[row, start : start + len(full_ids)] = torch.tensor(full_ids)
                mask[row, start : start + len(full_ids)] = 1
                answer = full_ids[len(prompt_ids) :]
                labels[row, width : width + len(answer)] = torch.tensor(answer)
            # Positions count real tokens only, as generate() derives them for left padding.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            # Logits only where a reference token is predicted (the last prompt column on):
            # the vocabulary projection of every prompt column was 15% of the pass on SmolLM2
            # (49k-word head) and nothing reads it. transformers' `logits_to_keep` (its
            # Llama/Qwen/... forward).
            result = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=tail + 1,
            )
            # Token t is predicted from position t-1 (what the model's own loss does).
            losses = torch.nn.functional.cross_entropy(
                result.logits[:, :-1].float().transpose(1, 2),
                labels[:, width:].to(device),
                ignore_index=-100,
                reduction="none",
            )
            out_.nll.extend(float(x) for x in losses.sum(dim=1))
            out_.tokens.extend(int(x) for x in (labels[:, width:] != -100).sum(dim=1))
            # Greedy answers from the prompts' cache (all but the last prompt column, which
            # generate() feeds itself to get the first answer token's logits), timed.
            cache = result.cache
            cache.crop(-(tail + 1))  # transformers 5: a negative count of columns to drop
            t0 = time.perf_counter()
            out = model.generate(
                input_ids=ids[:, :width].to(device),
                attention_mask=mask[:, :width].to(device),
                cache=cache,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            out_.seconds += time.perf_counter() - t0
            for row in out[:, width:].tolist():
                new = _until_stop(row, stops)
                out_.generated += len(new)
                out_.answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return out_


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


def support_of(settings: Settings) -> metrics.Support:
    """The NLI cross-encoder when ``evaluate.nli_model`` names one, else the word measure."""
    if settings.evaluate.nli_model:
        return metrics.NliSupport(settings.evaluate.nli_model)
    return metrics.supports


def relevancy(
    settings: Settings, prepared: Sequence[Prepared], answers: Sequence[str]
) -> list[float]:
    """Cosine of each question and its answer with the embedding model retrieval uses (NaN for
    handed-in prompts, whose question is not separate)."""
    from bigbertha.documents.embeddings import embed_model

    asked = [
        (i, p.item.question, a)
        for i, (p, a) in enumerate(zip(prepared, answers, strict=True))
        if p.item.question is not None
    ]
    result = [math.nan] * len(prepared)
    if not asked:
        return result
    model = embed_model(settings)
    questions = model.get_text_embedding_batch([q for _, q, _ in asked])
    replies = model.get_text_embedding_batch([a or " " for _, _, a in asked])
    for (i, _, answer), q, a in zip(asked, questions, replies, strict=True):
        result[i] = metrics.cosine(q, a) if answer.strip() else 0.0
    return result


def per_example(
    settings: Settings, prepared: Sequence[Prepared], generated: Generated
) -> list[dict[str, Any]]:
    """Every example's scores (NaN where a metric does not apply)."""
    support = support_of(settings)
    relevant = relevancy(settings, prepared, generated.answers)
    rows = []
    for i, p in enumerate(prepared):
        answer = generated.answers[i]
        row: dict[str, Any] = {"id": p.item.id, "kind": p.item.kind}
        row.update(
            metrics.answer_scores(answer, p.item.reference, p.passages, p.item.answerable, support)
        )
        row["hit_at_k"] = float(any(p.hits)) if p.hits is not None else math.nan
        row["mrr"] = metrics.reciprocal_rank(p.hits) if p.hits is not None else math.nan
        row["answer_relevancy"] = relevant[i]
        row["nll"], row["tokens"] = generated.nll[i], generated.tokens[i]
        row["answer"] = answer
        rows.append(row)
    return rows


def aggregate(
    rows: Sequence[Mapping[str, Any]], generated: Generated | None = None
) -> dict[str, float]:
    """The set's metrics: means over the examples each applies to; perplexity over tokens."""
    tokens = sum(int(r["tokens"]) for r in rows)
    result = {
        "perplexity": math.exp(sum(float(r["nll"]) for r in rows) / tokens) if tokens else math.inf
    }
    for name in PER_EXAMPLE:
        result[name] = metrics.mean([float(r.get(name, math.nan)) for r in rows])
    if generated is not None:
        result["tokens_per_second"] = (
            generated.generated / generated.seconds if generated.seconds else 0.0
        )
    return result


def load_eval_set(settings: Settings, uri: str | None) -> tuple[str, evalset.EvalSet]:
    """(name, set) of the evaluation set (`evalset.load`): ``evaluate.golden`` and `uri` or
    ``evaluate.data``."""
    the_set = evalset.load(settings, uri)
    return the_set.name, the_set


def cached_report(settings: Settings, key: str) -> EvalReport | None:
    """The report of an earlier evaluate run with the same `score_key`, if MLflow has one."""
    import mlflow

    with registry.mlflow_errors(settings):
        registry.client(settings)
        runs = mlflow.search_runs(
            experiment_names=[registry.EXPERIMENT],
            filter_string=f"tags.score_key = '{key}' and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        if not runs:
            return None
        data = mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/eval_report.json")
    report = EvalReport.from_json(data)
    if not report.scores:
        return None
    log.info("reusing the scores of %s from MLflow run %s", report.model, runs[0].info.run_id)
    return report


def reusable(model_ref: str) -> bool:
    """Registered versions never change, so their scores can be reused; paths can change."""
    return model_ref.startswith("models:/") and model_ref.rsplit("/", 1)[-1].isdigit()


def run(
    settings: Settings,
    model_ref: str,
    *,
    data: str | None = None,
    report: str | None = None,
    tags: Mapping[str, str] | None = None,
    eval_set: evalset.EvalSet | None = None,
    prepared: Sequence[Prepared] | None = None,
) -> EvalReport:
    """Benchmark `model_ref`; log to MLflow and write the JSON report (path or s3://).

    `eval_set` and `prepared`: for a caller that benchmarks several models on one set (the
    gate), read and retrieved once.
    """

    tracking.bound_client_retries(settings)
    # 1. The evaluation set, and each question's retrieved prompt.
    the_set = eval_set or load_eval_set(settings, data)[1]
    prepared = prepared if prepared is not None else prepare(settings, the_set.items)
    key = score_key(settings, model_ref, prepared)
    cached = cached_report(settings, key) if reusable(model_ref) else None
    if cached is not None and cached.eval_hash == the_set.hash:
        result = cached
    else:
        # 2. Answer every question; score the answers.
        model, tokenizer, version = loading.load_causal_lm(model_ref, settings)
        if hasattr(model, "merge_and_unload"):  # an adapter: fold it in, answers cost the base's
            model = model.merge_and_unload()
        generated = score(
            model, tokenizer, [p.example for p in prepared], settings.evaluate.max_new_tokens
        )
        rows = per_example(settings, prepared, generated)
        result = EvalReport(
            model=model_ref,
            version=version,
            eval_data=the_set.name,
            eval_hash=the_set.hash,
            examples=len(prepared),
            metrics=aggregate(rows, generated),
            samples=[
                {
                    "question": p.item.question or "",
                    "answer": r["answer"],
                    "reference": p.item.reference,
                }
                for p, r in list(zip(prepared, rows, strict=True))[:5]
            ],
            scores=rows,
            key=key,
        )
    # 3. Log the set, the metrics and the report to MLflow.
    reused_from = (cached.mlflow_run_id or "") if cached is result else ""
    log_run(settings, result, the_set, key, tags=tags, reused_from=reused_from)
    log.info(
        "evaluated %s (version %s) on %s (%s): %s",
        model_ref,
        result.version,
        the_set.name,
        the_set.hash[:12],
        _fmt(result.metrics),
    )
    target = report or settings.evaluate.report
    if target:
        storage.write_bytes(settings, target, json.dumps(result.to_json(), indent=2).encode())
    return result


def log_run(
    settings: Settings,
    result: EvalReport,
    the_set: evalset.EvalSet,
    key: str,
    *,
    tags: Mapping[str, str] | None = None,
    reused_from: str = "",
) -> None:
    """One MLflow run for `result`: the set as its input, the metrics, the report as an
    artifact, and the `score_key` tag `cached_report` finds it by. Sets its run id."""
    import mlflow

    with registry.mlflow_errors(settings):
        registry.client(settings)
        mlflow.set_experiment(registry.EXPERIMENT)
    with mlflow.start_run(run_name=f"evaluate-{result.version}", tags=tracking.owner_tags()) as run:
        mlflow.set_tags(
            {
                "step": "evaluate",
                "model": result.model,
                "model_version": result.version,
                "score_key": key,
                "eval_hash": the_set.hash,
                "reused_from": reused_from,
            }
        )
        mlflow.set_tags({k: v for k, v in (tags or {}).items() if v})
        mlflow.log_params(
            {
                "eval_data": the_set.name,
                "eval_hash": the_set.hash,
                "examples": result.examples,
                "eval_kinds": json.dumps(the_set.counts(), sort_keys=True),
            }
        )
        evalset.log_to_mlflow(the_set)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if math.isfinite(v)})
        result.mlflow_run_id = run.info.run_id
        mlflow.log_dict(result.to_json(), "eval_report.json")


def remember_as(
    settings: Settings,
    report: EvalReport,
    model_ref: str,
    the_set: evalset.EvalSet,
    prepared: Sequence[Prepared],
) -> None:
    """File `report` (scored on a path) under the registered version `model_ref` it became,
    so the next gate, where that version is the champion, reads its scores back."""
    import dataclasses

    copy = dataclasses.replace(
        report, model=model_ref, key=score_key(settings, model_ref, prepared)
    )
    log_run(settings, copy, the_set, copy.key, reused_from=report.mlflow_run_id or "")


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
