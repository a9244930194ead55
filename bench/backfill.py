"""Benchmark backfill ingestion: documents per second with 1 and 2 parallel workers.

    .venv/bin/python bench/backfill.py [--docs 2000] [--batch-size 50] [--seed 7] [--quick]

A corpus of short Markdown documents (a page each, 1-3 chunks: memos, tickets, FAQ entries) is
uploaded to a local S3 server (moto) under one prefix; Milvus is the milvus-lite server. The
prefix is split into batches as the `ingest-backfill` WorkflowTemplate's plan step splits it
(`bigbertha.documents.backfill.plan`), then ingested twice into fresh collections:

  (1) one worker process runs every batch;
  (2) two worker processes run half of the batches each, at the same time.

Each worker is what one batch pod of the chart is at its default request of 500m-1 CPU: a
process limited to one CPU thread (torch.set_num_threads(1), OMP/MKL/tokenizers at 1) that
runs `backfill.run_batch` on its batches. Workers load the embedding model before the clock
starts (a pod does that once per batch; its cost is reported apart), so the figure is the
steady rate. Each worker also times where its seconds go: embedding, Milvus (query, upsert,
delete), S3 (stat, get) and the rest (parsing, chunking), which names the limit.

Prints documents per second for 1 and 2 workers and their ratio (aim >= 1.6 on this machine,
2 cores); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import WORDS  # noqa: E402 - bench/ingest.py's corpus vocabulary, one definition


def document(n: int, rng: random.Random) -> bytes:
    """A page: a title and 2-6 paragraphs of 1-4 sentences (about 100-450 words)."""
    paragraphs = []
    for _ in range(rng.randint(2, 6)):
        sentences = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 22))).capitalize() + "."
            for _ in range(rng.randint(1, 4))
        ]
        paragraphs.append(" ".join(sentences))
    return (f"# Note {n}\n\n" + "\n\n".join(paragraphs) + "\n").encode()


# --- a worker: one process, one CPU thread ----------------------------------------------------


class Clock:
    """Seconds spent per part, by wrapping the methods that do the part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, method: str, part: str) -> None:
        real = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - started

        setattr(owner, method, timed)


def worker(batches_file: Path) -> None:
    """Load the model, say ready, wait for `go` on stdin, ingest the batches, print figures."""
    import torch

    torch.set_num_threads(1)
    from bigbertha.core import logs
    from bigbertha.core.settings import load
    from bigbertha.core.storage import Storage
    from bigbertha.documents import backfill
    from bigbertha.documents.embeddings import embed_model
    from bigbertha.documents.vectorstore import Index

    logs.configure("WARNING", "text")
    settings = load()
    loading = time.perf_counter()
    embed: Any = embed_model(settings)
    embed.encode_documents(["warm up the model"] * 4)
    load_s = time.perf_counter() - loading
    clock = Clock()
    clock.wrap(type(embed), "encode_documents", "embedding")
    for method in ("write", "delete", "existing", "vectors"):
        clock.wrap(Index, method, "milvus")
    for method in ("stat", "get", "list"):
        clock.wrap(Storage, method, "s3")
    batches = [backfill.Batch.parse(b) for b in json.loads(batches_file.read_text())]
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    docs = chunks = 0
    for batch in batches:
        summary, _ = backfill.run_batch(settings, batch)
        assert summary["exit_code"] == 0, summary
        docs += summary["totals"]["ingested"]
        chunks += summary["totals"]["chunks_added"]
    elapsed = time.perf_counter() - started
    figures = {"docs": docs, "chunks": chunks, "seconds": elapsed, "load_s": load_s}
    print(json.dumps(figures | {"parts": clock.seconds}), flush=True)


# --- the benchmark ----------------------------------------------------------------------------


def run_workers(
    batches: list[dict[str, Any]], workers: int, env: dict[str, str], work: Path
) -> dict[str, Any]:
    """Start `workers` processes on a static split of the batches; time them from `go`."""
    collection = f"backfill_{workers}_{uuid.uuid4().hex[:6]}"
    procs = []
    for w in range(workers):
        part = work / f"batches-{workers}-{w}.json"
        part.write_text(json.dumps(batches[w::workers]))
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(part)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(work / f"worker-{workers}-{w}.log").open("w"),  # per-document progress
                text=True,
                env=env | {"BIGBERTHA_MILVUS__COLLECTION": collection},
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            logs = "".join(p.read_text()[-2000:] for p in work.glob(f"worker-{workers}-*.log"))
            raise SystemExit(f"a worker did not start ({line!r}):\n{logs}")
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            logs = "".join(p.read_text()[-2000:] for p in work.glob(f"worker-{workers}-*.log"))
            raise SystemExit(f"a worker exited {proc.returncode}:\n{logs}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.perf_counter() - started
    parts: dict[str, float] = {}
    for r in results:
        for part, seconds in r["parts"].items():
            parts[part] = parts.get(part, 0.0) + seconds
    busy = sum(r["seconds"] for r in results)
    parts["other"] = max(0.0, busy - sum(parts.values()))
    return {
        "docs": sum(r["docs"] for r in results),
        "chunks": sum(r["chunks"] for r in results),
        "seconds": elapsed,
        "load_s": max(r["load_s"] for r in results),
        "share": {k: v / busy for k, v in parts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents in the corpus")
    parser.add_argument("--batch-size", type=int, default=50, help="documents per batch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(docs=40, batch_size=10)
        args = parser.parse_args()

    from bigbertha.core.settings import load
    from bigbertha.core.storage import open_client
    from bigbertha.documents import backfill
    from bigbertha.local.stack import ServiceManager

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        work = Path(tmp)
        services = ServiceManager(work / "services")
        try:
            s3, milvus = services.s3(), services.milvus()
            env = os.environ | ONE_THREAD
            env |= {
                "BIGBERTHA_S3__ENDPOINT": s3.extra["endpoint"],
                "BIGBERTHA_S3__ACCESS_KEY": s3.extra["access_key"],
                "BIGBERTHA_S3__SECRET_KEY": s3.extra["secret_key"],
                "BIGBERTHA_MILVUS__URI": milvus.extra["uri"],
            }
            settings = load(
                overrides={
                    "s3": {
                        "endpoint": s3.extra["endpoint"],
                        "access_key": s3.extra["access_key"],
                        "secret_key": s3.extra["secret_key"],
                    },
                    "milvus": {"uri": milvus.extra["uri"]},
                }
            )
            storage = open_client(settings)
            storage.ensure_bucket("documents")
            rng = random.Random(args.seed)
            uploading = time.perf_counter()
            for n in range(args.docs):
                storage.put("documents", f"backfill/note-{n:05d}.md", document(n, rng))
            upload_s = time.perf_counter() - uploading
            plan = backfill.plan(settings, "s3://documents/backfill/", args.batch_size)
            batches = [backfill.as_dict(b) for b in plan]
            print(
                f"corpus: {args.docs} documents in {len(batches)} batches of {args.batch_size} "
                f"(uploaded in {upload_s:.1f} s); workers: 1 CPU thread each; "
                f"{os.cpu_count()} CPUs"
            )
            one = run_workers(batches, 1, env, work)
            two = run_workers(batches, 2, env, work)
        finally:
            services.stop_all()

    assert one["docs"] == two["docs"] == args.docs, (one["docs"], two["docs"])
    assert one["chunks"] == two["chunks"], (one["chunks"], two["chunks"])
    r1, r2 = one["docs"] / one["seconds"], two["docs"] / two["seconds"]
    limit = max(one["share"], key=lambda k: one["share"][k])
    for name, r, fig in (("1 worker ", r1, one), ("2 workers", r2, two)):
        shares = "  ".join(f"{k} {v:.0%}" for k, v in sorted(fig["share"].items()))
        print(
            f"{name} {fig['docs']:6d} docs {fig['chunks']:6d} chunks {fig['seconds']:8.2f} s "
            f"{r:8.2f} docs/s   ({shares})"
        )
    print(f"2 workers / 1 worker = {r2 / r1:.3f} (aim >= 1.6)")
    print(
        f"per worker: {r1:.2f} docs/s, {one['chunks'] / one['docs']:.2f} chunks/doc; "
        f"the limit: {limit} ({one['share'][limit]:.0%} of a worker's time); model load "
        f"{one['load_s']:.1f} s per process"
    )
    result = {
        "docs": args.docs,
        "chunks": one["chunks"],
        "batch_size": args.batch_size,
        "docs_per_s_1_worker": round(r1, 3),
        "docs_per_s_2_workers": round(r2, 3),
        "ratio_2_over_1": round(r2 / r1, 3),
        "limit": limit,
        "share_1_worker": {k: round(v, 3) for k, v in one["share"].items()},
        "model_load_s": round(one["load_s"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
