"""Benchmark the chatbot's answer path: where the time of one answer goes, and retrieval at scale.

    .venv/bin/python bench/chat.py [--answers 5] [--max-new-tokens 32] [--chunks 100000] [--quick]

1. A handbook is ingested into a milvus-lite collection; SmolLM2 (CPU) answers `--answers`
   questions through the real RAG core with telemetry and the feedback log in a real Redis
   (redis-server on a free port; telemetry off if it is not installed). Prints the median time
   per answer split into retrieval, prompt building, generation and telemetry, and the RAG
   overhead ratio = (everything but generation) / generation (aim: <= 0.1).
2. `--chunks` random unit vectors (the embedding dim) are inserted straight into a second
   collection; retrieval (query embedding + search + cutoff) runs 100 times there and on the
   handbook collection: p50/p95 and the ratio of the large collection's p95 to the small one's.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bigbertha.local.stack import ServiceManager  # noqa: E402

# The chat tests' handbook and question (tests/chat/helpers.py), imported so they cannot drift.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.chat.helpers import HANDBOOK, MASCOT, engine_for  # noqa: E402

QUESTIONS = [
    MASCOT,
    "How long do refunds take?",
    "Within how many days can a refund be requested?",
    "Where does the mascot live?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_redis(workdir: Path) -> tuple[ServiceManager | None, str | None]:
    """A redis-server of the benchmark's own, or (None, None) when it is not installed."""
    from bigbertha.core.errors import ServiceUnavailable

    services = ServiceManager(workdir / "services")
    try:
        return services, str(services.redis().extra["url"])
    except ServiceUnavailable:
        return None, None


def fill_random(settings: object, count: int, batch: int = 10_000) -> float:
    """Insert `count` random unit vectors as chunks, straight through the store's Milvus
    client (the rows carry the same fields and metadata ingestion writes); returns seconds."""
    import numpy as np

    from bigbertha.documents.embeddings import dimension, embed_model
    from bigbertha.documents.vectorstore import open_store

    store = open_store(settings, create=True)  # type: ignore[arg-type]
    dim = dimension(embed_model(settings))  # type: ignore[arg-type]
    collection = settings.milvus.collection  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for first in range(0, count, batch):
        n = min(batch, count - first)
        vectors = rng.standard_normal((n, dim)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [
            {
                "id": f"synthetic-{first + i}",
                "embedding": vectors[i].tolist(),
                "text": f"synthetic chunk {first + i}",
                "doc_id": f"s3://bench/doc-{(first + i) // 50}.txt",
                "source": f"s3://bench/doc-{(first + i) // 50}.txt",
                "file_name": f"doc-{(first + i) // 50}.txt",
                "page": 1,
                "section": "",
                "chunk_index": (first + i) % 50,
            }
            for i in range(n)
        ]
        store.client.insert(collection, rows)
    store.client.flush(collection)
    return time.perf_counter() - started


def retrieval_latencies(retriever: object, runs: int) -> list[float]:
    out = []
    for n in range(runs):
        question = f"{QUESTIONS[n % len(QUESTIONS)]} ({n})"
        started = time.perf_counter()
        retriever.retrieve(question)  # type: ignore[attr-defined]
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--retrievals", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args()
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(answers=2, max_new_tokens=8, chunks=2_000, retrievals=20)
        args = parser.parse_args()

    from bigbertha.chat.llm import load_transformers
    from bigbertha.chat.model_server import ModelServer
    from bigbertha.core.settings import Settings
    from bigbertha.documents import ingest
    from bigbertha.documents.retrieval import Retriever

    workdir = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    services, redis_url = start_redis(workdir)
    try:
        settings = Settings(
            milvus={"uri": str(workdir / "milvus.db"), "collection": "handbook"},
            redis={"url": redis_url, "timeout_seconds": 0.5},
            llm={"max_new_tokens": args.max_new_tokens},
            chat={"champion_alias": "", "similarity_cutoff": 0.2},
        )
        (workdir / "handbook.md").write_text(HANDBOOK)
        ingest.run(settings, [str(workdir / "handbook.md")])

        started = time.perf_counter()
        model = load_transformers("smollm2", settings)
        load_s = time.perf_counter() - started
        engine = engine_for(
            settings, ModelServer(lambda ref: model, fallback_ref="smollm2").start()
        )
        engine.warm_up()
        engine.ask(QUESTIONS[0])  # first generation pays one-off allocations

        stages: dict[str, list[float]] = {
            k: [] for k in ("retrieval", "prompt", "generation", "telemetry", "total", "ttft")
        }
        tokens = []
        for n in range(args.answers):
            answer = engine.ask(QUESTIONS[n % len(QUESTIONS)])
            t = answer.timings
            for key in stages:
                value = getattr(t, key)
                if value is not None:
                    stages[key].append(value)
            tokens.append(answer.completion_tokens)
        median = {k: statistics.median(v) for k, v in stages.items() if v}
        overhead = median["retrieval"] + median["prompt"] + median["telemetry"]
        ratio = overhead / median["generation"]
        tok_per_s = statistics.median(tokens) / median["generation"]
        print(
            f"SmolLM2 load: {load_s:.1f}s; {args.answers} answers, <= {args.max_new_tokens} tokens"
        )
        for key in ("retrieval", "prompt", "generation", "telemetry", "ttft", "total"):
            print(f"  median {key:<10} {median[key] * 1000:10.1f} ms")
        print(f"  generation speed {tok_per_s:.1f} tokens/s")
        print(f"RAG overhead ratio (non-generation / generation): {ratio:.4f} (aim <= 0.1)")

        small = retrieval_latencies(engine.retriever, args.retrievals)
        big_settings = settings.model_copy(
            update={"milvus": settings.milvus.model_copy(update={"collection": "synthetic"})}
        )
        fill_s = fill_random(big_settings, args.chunks)
        big_retriever = Retriever(big_settings)
        big_retriever.retrieve("warm-up")
        big = retrieval_latencies(big_retriever, args.retrievals)
        small_p95, big_p50, big_p95 = (
            percentile(small, 95),
            percentile(big, 50),
            percentile(big, 95),
        )
        print(f"inserted {args.chunks} synthetic chunks in {fill_s:.1f}s")
        print(
            f"retrieval on {args.chunks} chunks: p50 {big_p50 * 1000:.1f} ms, "
            f"p95 {big_p95 * 1000:.1f} ms; on the handbook p95 {small_p95 * 1000:.1f} ms "
            f"(ratio {big_p95 / small_p95:.2f})"
        )
        result = {
            "answers": args.answers,
            "max_new_tokens": args.max_new_tokens,
            "median_ms": {k: round(v * 1000, 2) for k, v in median.items()},
            "generation_tokens_per_s": round(tok_per_s, 2),
            "rag_overhead_ratio": round(ratio, 4),
            "telemetry": "redis" if redis_url else "off",
            "retrieval_chunks": args.chunks,
            "retrieval_p50_ms": round(big_p50 * 1000, 2),
            "retrieval_p95_ms": round(big_p95 * 1000, 2),
            "retrieval_p95_small_ms": round(small_p95 * 1000, 2),
            "retrieval_p95_ratio_vs_small": round(big_p95 / small_p95, 3),
            "model_load_s": round(load_s, 2),
        }
        print(json.dumps(result))
    finally:
        if services is not None:
            services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
