"""Benchmark document ingestion throughput (chunks per second) on a generated corpus.

    .venv/bin/python bench/ingest.py [--docs 120] [--seed 7] [--quick]

A corpus of Markdown documents with sections of varied length (like real handbooks) is written
to a temporary directory; it yields at least 2,000 chunks at the default chunk settings. Then, in
one process, with the embedding model already loaded for all three:

  (a) raw: sentence-transformers encodes exactly the chunk texts bigbertha produces, in one
      `encode` call with the same batch size: the limit on this machine;
  (b) bigbertha: `ingest.run` over the directory into a fresh milvus-lite file (read, chunk,
      embed, write, with the idempotency diff);
  (c) llamaindex: `VectorStoreIndex.from_documents` over `SimpleDirectoryReader` documents into
      a fresh milvus-lite MilvusVectorStore, with LlamaIndex's defaults (embed batch of 10,
      metadata embedded with the text) and the same splitter settings and model.

Prints chunks/s for each, b/a (aim >= 0.85) and b/c (aim >= 2), and a/c: the most b/c can be
while ingestion embeds with the same model on the same CPU (b <= a). When a/c < 2 the b/c aim is
out of reach for any pipeline around this model; only a cheaper embedding could get there. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_VOCABULARY = (
    "llama alpaca barn hay fence water trough shearing wool vet vaccine spring summer winter "
    "feed pellets pasture gate herd calf mother guard dog farmer tractor invoice refund policy "
    "badge office lobby security training schedule shift weekend holiday report audit ledger "
    "supplier contract delivery truck storage shelf label inventory safety helmet glove boots"
)
WORDS = _VOCABULARY.split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 22))]
    return " ".join(words).capitalize() + "."


def make_corpus(root: Path, docs: int, seed: int) -> None:
    """`docs` Markdown files, 6-12 sections each, sections of 1-14 paragraphs."""
    rng = random.Random(seed)
    for d in range(docs):
        lines = [f"# Handbook {d}", ""]
        for s in range(rng.randint(6, 12)):
            lines += [f"## Section {d}.{s}", ""]
            for _ in range(rng.randint(1, 14)):
                lines += [" ".join(sentence(rng) for _ in range(rng.randint(1, 5))), ""]
        (root / f"handbook-{d:04d}.md").write_text("\n".join(lines), encoding="utf-8")


def chunk_texts(settings: Any, corpus: Path, embed: Any) -> list[str]:
    """The exact chunk texts bigbertha embeds for the corpus."""
    from bigbertha.documents import readers
    from bigbertha.documents.chunking import Chunker

    chunker = Chunker(settings, embed.tokenizer)
    texts: list[str] = []
    for path in sorted(corpus.glob("*.md")):
        sections = readers.read(path.name, path.read_bytes())
        texts += [n.text for n in chunker.chunks(f"file://{path}", path.name, sections, "x", None)]
    return texts


def bench_raw(embed: Any, texts: list[str]) -> float:
    model = embed._model  # the sentence-transformers model itself
    started = time.perf_counter()
    model.encode(texts, batch_size=embed.embed_batch_size, normalize_embeddings=True)
    return time.perf_counter() - started


def bench_bigbertha(settings: Any, corpus: Path) -> tuple[float, int]:
    from bigbertha.documents import ingest

    started = time.perf_counter()
    report = ingest.run(settings, [str(corpus)])
    elapsed = time.perf_counter() - started
    totals = report.to_dict()["totals"]
    assert totals["rejected"] == 0 and totals["ingested"] == totals["sources"], totals
    return elapsed, int(totals["chunks_added"])


def bench_llamaindex(settings: Any, corpus: Path, uri: str, embed: Any) -> tuple[float, int]:
    from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from bigbertha.documents.embeddings import _embedding_class

    # The same model behind LlamaIndex's default embedding batch size (10).
    default_embed = _embedding_class()(embed._model, model_name="default", batch_size=10)
    started = time.perf_counter()
    documents = SimpleDirectoryReader(str(corpus)).load_data()
    store = MilvusVectorStore(uri=uri, collection_name="baseline", dim=embed.dimension)
    splitter = SentenceSplitter(
        chunk_size=settings.ingest.chunk_size,
        chunk_overlap=settings.ingest.chunk_overlap,
        tokenizer=embed.tokenizer.tokenize,
    )
    index = VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=default_embed,
        transformations=[splitter],
    )
    elapsed = time.perf_counter() - started
    count = int(store.client.get_collection_stats("baseline")["row_count"])
    del index
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=120, help="documents in the corpus")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args()
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(docs=2)
        args = parser.parse_args()

    import torch

    from bigbertha.core import logs
    from bigbertha.core.settings import load
    from bigbertha.documents.embeddings import embed_model

    logs.configure("WARNING", "text")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.docs, args.seed)
        settings = load(overrides={"milvus": {"uri": str(work / "bigbertha.db")}})
        embed: Any = embed_model(settings)
        embed.encode_documents(["warm up the model"] * 8)

        texts = chunk_texts(settings, corpus, embed)
        print(
            f"corpus: {args.docs} documents, {len(texts)} chunks; torch threads "
            f"{torch.get_num_threads()}; batch {embed.embed_batch_size}"
        )
        # A full run measures steady throughput; --quick only proves the benchmark still runs.
        assert args.quick or len(texts) >= 2000, f"only {len(texts)} chunks: raise --docs"

        t_a = bench_raw(embed, texts)
        t_b, n_b = bench_bigbertha(settings, corpus)
        t_c, n_c = bench_llamaindex(settings, corpus, str(work / "baseline.db"), embed)

    a, b, c = len(texts) / t_a, n_b / t_b, n_c / t_c
    print(f"(a) raw encode      {len(texts):6d} chunks {t_a:8.2f} s {a:8.1f} chunks/s")
    print(f"(b) bigbertha ingest {n_b:5d} chunks {t_b:8.2f} s {b:8.1f} chunks/s")
    print(f"(c) llamaindex      {n_c:6d} chunks {t_c:8.2f} s {c:8.1f} chunks/s")
    print(f"b/a = {b / a:.3f} (aim >= 0.85)   b/c = {b / c:.3f} (aim >= 2)")
    print(f"a/c = {a / c:.3f}: the ceiling of b/c with this model on this CPU (b <= a)")
    result = {
        "docs": args.docs,
        "chunks": len(texts),
        "raw_chunks_per_s": round(a, 2),
        "bigbertha_chunks_per_s": round(b, 2),
        "llamaindex_chunks_per_s": round(c, 2),
        "llamaindex_chunks": n_c,
        "b_over_a": round(b / a, 3),
        "b_over_c": round(b / c, 3),
        "a_over_c": round(a / c, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
