"""evaluate: the gate's benchmark with retrieval in the loop, against real milvus-lite, MLflow
and S3, with the tiny model (generation quality does not matter here; the plumbing does)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import storage
from bigbertha.core.settings import Settings
from bigbertha.training import data as training_data
from bigbertha.training import evalset, evaluate
from tests.models.helpers import mlflow_settings

ROOT = Path(__file__).resolve().parents[2]
METRICS = {
    "perplexity",
    "token_f1",
    "rouge_l",
    "hit_at_k",
    "mrr",
    "groundedness",
    "citation_correctness",
    "answer_relevancy",
    "abstention",
    "completeness",
    "tokens_per_second",
}


@pytest.fixture(scope="module")
def docs_kb(milvus_server: Any, s3_server: Any, mlflow_server: Any) -> Settings:
    """docs/rollback.md ingested as `bigbertha ingest` does; the shipped golden set's questions
    about it (and its unanswerable ones) in S3 as the golden set of record."""
    from bigbertha.documents import ingest

    settings = mlflow_settings(
        mlflow_server,
        milvus={"uri": milvus_server.extra["uri"], "collection": "gate_test"},
        s3={k: s3_server.extra[k] for k in ("endpoint", "access_key", "secret_key")},
        chat={"top_k": 3, "similarity_cutoff": 0.2},
        evaluate={"golden": "s3://gate-test/golden.jsonl", "max_new_tokens": 4},
        promote={"min_examples": 50, "guard_metrics": {}, "gate_metrics": ["perplexity"]},
    )
    report = ingest.run(settings, [str(ROOT / "docs" / "rollback.md")])
    assert report.to_dict()["totals"]["ingested"] == 1
    rows = [json.loads(line) for line in evalset.shipped_golden().decode().splitlines()]
    about = [r for r in rows if any("rollback.md" in g["document"] for g in r["gold"])][:5]
    unanswerable = [r for r in rows if not r["answerable"]][:2]
    client = storage.open_client(settings)
    client.ensure_bucket("gate-test")
    body = "".join(json.dumps(r) + "\n" for r in about + unanswerable).encode()
    client.put("gate-test", "golden.jsonl", body)
    return settings


@pytest.mark.slow
def test_the_gate_retrieves_as_the_chatbot_and_reports_every_metric(
    docs_kb: Settings, tiny_model: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    from mlflow import MlflowClient

    the_set = evalset.load(docs_kb)
    assert the_set.counts() == {"unanswerable": 2, **_kinds(the_set)}
    prepared = evaluate.prepare(docs_kb, the_set.items)
    # The prompt is the chatbot's, over passages retrieved from Milvus (not handed in).
    first_prompt = prepared[0].example["prompt"][-1]["content"]
    assert first_prompt.startswith("Context passages:\n\nPassage 1: rollback.md, section ")
    assert prepared[0].passages and all(p.hits is not None for p in prepared[:5])

    report_uri = "s3://gate-test/evaluation.json"
    result = evaluate.run(docs_kb, str(tiny_model), report=report_uri, eval_set=the_set)
    report = json.loads(storage.read_bytes(docs_kb, report_uri))
    assert report["eval_hash"] == the_set.hash and report["examples"] == 7
    assert set(report["metrics"]) >= METRICS - {"groundedness", "citation_correctness"}
    # Retrieval found a gold section of rollback.md for most of its own questions.
    assert report["metrics"]["hit_at_k"] >= 0.6
    assert 0 < report["metrics"]["mrr"] <= report["metrics"]["hit_at_k"]
    by_kind = {row["id"]: row for row in report["scores"]}
    assert len(by_kind) == 7 and all("nll" in row for row in by_kind.values())
    for row in by_kind.values():  # hit@k applies to answerable golden questions only
        assert ("hit_at_k" in row) == (row["kind"] != "unanswerable")
    assert 10 < report["metrics"]["perplexity"] < 10_000
    run = MlflowClient(docs_kb.mlflow.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["hit_at_k"] == pytest.approx(report["metrics"]["hit_at_k"])
    assert run.data.params["eval_hash"] == the_set.hash
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == the_set.hash[:36]
    assert dataset.dataset.name == f"eval-{the_set.hash[:12]}"


def _kinds(the_set: evalset.EvalSet) -> dict[str, int]:
    return {k: v for k, v in the_set.counts().items() if k != "unanswerable"}


@pytest.mark.slow
def test_not_enough_evidence_keeps_the_champion_and_says_so_on_the_version(
    docs_kb: Settings, trained_adapter: Any, clean_env: Path
) -> None:
    from bigbertha.models import registry
    from bigbertha.training import promote

    adapter, _, trained = trained_adapter
    settings = docs_kb.model_copy(
        update={
            "mlflow": trained.mlflow.model_copy(
                update={"model_name": f"{trained.mlflow.model_name}-rag"}
            )
        }
    )
    decision = promote.run(settings, str(adapter))
    assert decision.decision == "rejected" and decision.evidence == "insufficient"
    assert "not enough evidence: perplexity" in decision.reason
    assert "only 7 paired examples (need 50)" in decision.reason
    tags = registry.version_tags(settings, str(decision.version))
    the_set = evalset.load(settings)
    assert tags["gate.evidence"] == "insufficient" and tags["eval_hash"] == the_set.hash
    assert tags["gate.decision"] == "rejected" and "gate.perplexity.interval" in tags
    assert registry.alias_version(settings, "champion") is None

    # A registered version scored once on these prompts is not scored again (an MLflow
    # artifact holds its per-example scores): the champion's side of the next gate is free.
    registry.promote(settings, str(decision.version))
    ref = f"models:/{settings.mlflow.model_name}/{decision.version}"
    first = evaluate.run(settings, ref)
    again = evaluate.run(settings, ref)
    assert again.scores == first.scores and again.key == first.key
    from mlflow import MlflowClient

    tags = MlflowClient(settings.mlflow.tracking_uri).get_run(again.mlflow_run_id).data.tags
    assert tags["reused_from"] == first.mlflow_run_id


@pytest.mark.slow
def test_scoring_in_batches_scores_each_example_as_alone(tiny_model: Path) -> None:
    # Prompts of different lengths share a batch: padding must change no answer and no loss.
    from bigbertha.models import loading

    model, tokenizer, _ = loading.load_causal_lm(str(tiny_model), Settings())
    rows = [
        {"prompt": "what color is the sky ?", "completion": "the sky is blue"},
        {"prompt": "what color is the grass number 3 and the snow ?", "completion": "green"},
        {"prompt": "sun ?", "completion": "the sun is yellow"},
        {"prompt": "what color is the night number 1 ?", "completion": "the night is black"},
        {"prompt": "what color is the apple and the grape ?", "completion": "red and purple"},
    ]
    text = "\n".join(json.dumps(row) for row in rows).encode()
    examples = training_data.parse_jsonl(text, "x")[0]
    lengths = {len(evaluate._encode(tokenizer, e)[0]) for e in examples}
    assert len(lengths) > 1, "the examples should differ in prompt length"
    alone = evaluate.score(model, tokenizer, examples, 6, batch_size=1)
    batched = evaluate.score(model, tokenizer, examples, 6, batch_size=4)
    assert batched.answers == alone.answers and batched.tokens == alone.tokens
    assert batched.nll == pytest.approx(alone.nll, rel=1e-4)
    assert all(math.isfinite(x) for x in batched.nll)
    # Scoring keeps only the answer's logits: it must still be the model's own loss on the
    # reference (transformers' mean over the labelled tokens, times their count).
    import torch

    for example, nll, tokens in zip(examples, alone.nll, alone.tokens, strict=True):
        prompt_ids, full_ids = evaluate._encode(tokenizer, example)
        ids = torch.tensor([full_ids])
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss
        assert tokens == len(full_ids) - len(prompt_ids)
        assert nll == pytest.approx(float(loss) * tokens, rel=1e-4)
