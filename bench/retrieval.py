"""Benchmark retrieval quality and latency on the golden set: dense, hybrid, hybrid + rerank.

    .venv/bin/python bench/retrieval.py [--corpus seed|all] [--k 4] [--rerank-model DIR]
        [--chunk-size 256] [--chunk-overlap 32] [--repeat 3] [--quick]

The corpus (`seed`: the demo's SEED_DOCS; `all`: README.md and every docs/*.md, more
distractors) is ingested by `bigbertha.documents.ingest.run` into a fresh milvus-lite file, with
the given chunk settings. Every answerable question of the golden set
(src/bigbertha/training/golden/bigbertha-docs.jsonl) is then asked through
`Retriever.retrieve`, exactly what the chatbot calls (top-k, similarity cutoff, ordering), in
each mode:

  dense           MiniLM vectors only (the baseline);
  hybrid-rrf      vectors + Milvus' BM25 full-text, reciprocal-rank fusion (k=60);
  hybrid-weighted the same fused by weighted normalised scores (0.5 / 0.5);
  +rerank         each hybrid mode reordered by the cross-encoder in --rerank-model, if given.

A retrieved chunk is relevant when its (file name, section) is a gold (document file name,
section). Per mode: hit@1, hit@k, MRR and nDCG@k (binary gains, each gold section counted once),
hit@k per question kind (plain, keyword, paraphrase: paraphrases avoid their gold section's
words, so keyword matching alone cannot win them), and retrieval latency per question (p50,
p95; modes interleaved per question, after a warm-up) with its ratio to dense. --quick asks the
first 10 rows of the seed corpus once. Unanswerable rows count only for what telemetry records:
the mean score of the retrieved chunks (dense cosine in every mode) and empty retrievals. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "src/bigbertha/training/golden/bigbertha-docs.jsonl"
KINDS = ("plain", "keyword", "paraphrase")


def corpus(which: str) -> list[Path]:
    from bigbertha.local.platform import SEED_DOCS

    if which == "seed":
        return [ROOT / d for d in SEED_DOCS]
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def questions(quick: bool) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines() if line]
    # The set is ordered so every prefix holds every kind (docs/evaluation.md).
    return rows[:10] if quick else rows


def ranks(chunks: list[Any], gold: list[dict[str, str]]) -> list[int]:
    """1-based positions of the first chunk of each distinct gold section retrieved."""
    wanted = {(Path(g["document"]).name, g["section"]) for g in gold}
    seen: set[tuple[str, str | None]] = set()
    found = []
    for position, chunk in enumerate(chunks, start=1):
        key = (chunk.file_name, chunk.section)
        if key in wanted and key not in seen:
            seen.add(key)
            found.append(position)
    return found


def scores(found: list[int], n_gold: int, k: int) -> dict[str, float]:
    dcg = sum(1 / math.log2(p + 1) for p in found if p <= k)
    ideal = sum(1 / math.log2(p + 1) for p in range(1, min(n_gold, k) + 1))
    first = min(found) if found else None
    return {
        "hit@1": float(first == 1),
        "hit@k": float(first is not None and first <= k),
        "mrr": 1 / first if first else 0.0,
        "ndcg@k": dcg / ideal if ideal else 0.0,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("seed", "all"), default="seed")
    parser.add_argument("--k", type=int, default=4, help="chunks retrieved (chat.top_k)")
    parser.add_argument("--rerank-model", help="a local cross-encoder directory")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--chunk-overlap", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the questions")
    parser.add_argument("--quick", action="store_true", help="8 questions, one pass (seconds)")
    args = parser.parse_args()

    from bigbertha.core.logs import configure
    from bigbertha.core.settings import Settings
    from bigbertha.documents import ingest
    from bigbertha.documents.retrieval import Retriever, load_reranker

    configure("WARNING", "text")
    rows = questions(args.quick)
    repeat = 1 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        base = Settings(
            milvus={"uri": str(Path(tmp) / "milvus.db"), "collection": "bench"},
            ingest={"chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap},
            chat={"top_k": args.k},
        )
        docs = corpus("seed" if args.quick else args.corpus)
        started = time.perf_counter()
        report = ingest.run(base, [str(d) for d in docs])
        ingest_s = time.perf_counter() - started
        chunks = sum(o.chunks for o in report.outcomes)

        def variant(ranker: str, rerank: bool) -> Retriever:
            options: dict[str, Any] = {"mode": "dense" if ranker == "dense" else "hybrid"}
            if ranker != "dense":
                options["ranker"] = ranker
            if rerank:
                options["rerank_model"] = args.rerank_model
            retrieval = base.chat.retrieval.model_copy(update=options)
            s = base.model_copy(
                update={"chat": base.chat.model_copy(update={"retrieval": retrieval})}
            )
            return Retriever(s, reranker=load_reranker(s) if rerank else None)

        modes = {"dense": variant("dense", False)}
        modes["hybrid-rrf"] = variant("rrf", False)
        modes["hybrid-weighted"] = variant("weighted", False)
        if args.rerank_model:
            modes["hybrid-rrf+rerank"] = variant("rrf", True)
            modes["hybrid-weighted+rerank"] = variant("weighted", True)
        for retriever in modes.values():
            retriever.retrieve("warm-up")

        per_mode: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        # What the telemetry records per answer (bigbertha_retrieval_score: every chunk's score,
        # bigbertha_retrieval_empty_total), answerable and unanswerable questions apart.
        recorded: dict[str, dict[bool, list[float]]] = {m: {True: [], False: []} for m in modes}
        empty: dict[str, dict[bool, int]] = {m: {True: 0, False: 0} for m in modes}
        kinds: dict[str, dict[str, list[float]]] = {m: {k: [] for k in KINDS} for m in modes}
        latency: dict[str, list[float]] = {m: [] for m in modes}
        misses: dict[str, list[str]] = {m: [] for m in modes}
        for n, row in enumerate(rows):
            names = list(modes)
            names = (
                names[n % len(names) :] + names[: n % len(names)]
            )  # rotate: no mode always first
            for name in names:
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    got = modes[name].retrieve(row["question"])
                    latency[name].append(time.perf_counter() - t0)
                recorded[name][row["answerable"]] += got.relevance
                empty[name][row["answerable"]] += not got
                if not row["answerable"]:
                    continue
                s = scores(ranks(got, row["gold"]), len(row["gold"]), args.k)
                per_mode[name].append(s)
                kinds[name][row["kind"]].append(s["hit@k"])
                if not s["hit@k"]:
                    misses[name].append(row["id"])

    dense_p95 = percentile(latency["dense"], 0.95)
    result: dict[str, Any] = {
        "corpus": "seed" if args.quick else args.corpus,
        "documents": len(docs),
        "chunks": chunks,
        "chunk_size": args.chunk_size,
        "chunk_overlap": args.chunk_overlap,
        "questions": sum(r["answerable"] for r in rows),
        "unanswerable": sum(not r["answerable"] for r in rows),
        "k": args.k,
        "ingest_s": round(ingest_s, 2),
        "modes": {},
    }
    print(
        f"{result['questions']} answerable and {result['unanswerable']} unanswerable questions, "
        f"{len(docs)} documents, {chunks} chunks "
        f"(size {args.chunk_size}, overlap {args.chunk_overlap}), k={args.k}"
    )
    print(
        f"{'mode':24} hit@1  hit@k  MRR    nDCG@k  plain keyword paraphrase  "
        "p50 ms  p95 ms  p95/dense  score  empty"
    )
    for name in modes:
        mean = {m: statistics.fmean(s[m] for s in per_mode[name]) for m in per_mode[name][0]}
        by_kind = {k: statistics.fmean(v) if v else None for k, v in kinds[name].items()}
        p50, p95 = percentile(latency[name], 0.5), percentile(latency[name], 0.95)
        entry = {
            **{m: round(v, 4) for m, v in mean.items()},
            "hit@k_by_kind": {k: None if v is None else round(v, 4) for k, v in by_kind.items()},
            "p50_ms": round(p50 * 1000, 2),
            "p95_ms": round(p95 * 1000, 2),
            "p95_ratio_to_dense": round(p95 / dense_p95, 3),
            "missed": misses[name],
            # Cosines in every mode: the low-relevance alert's mean and the empty-retrieval ratio.
            "mean_score": {
                "answerable": round(statistics.fmean(recorded[name][True] or [0.0]), 4),
                "unanswerable": round(statistics.fmean(recorded[name][False] or [0.0]), 4),
            },
            "empty": {"answerable": empty[name][True], "unanswerable": empty[name][False]},
        }
        result["modes"][name] = entry
        kind_cols = "  ".join(f"{(v or 0):.2f}" for v in by_kind.values())
        print(
            f"{name:24} {mean['hit@1']:.3f}  {mean['hit@k']:.3f}  {mean['mrr']:.3f}  "
            f"{mean['ndcg@k']:.3f}   {kind_cols}      {p50 * 1000:6.1f}  {p95 * 1000:6.1f}  "
            f"{p95 / dense_p95:.2f}  {entry['mean_score']['answerable']:.3f}  "
            f"{entry['empty']['answerable']}+{entry['empty']['unanswerable']}"
        )
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
