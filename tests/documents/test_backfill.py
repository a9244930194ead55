"""Backfill ingestion (`bigbertha ingest --prefix`, `--plan-out`/`--batch`/`--merge`) against the
real milvus-lite server and the S3 server: concurrent batches write exactly the chunks of a serial
run, a writer of an older version converges to the newer one written meanwhile, and a batch
stopped half-way and run again leaves no duplicate."""

from __future__ import annotations

import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import settings as settings_mod
from bigbertha.core.storage import Storage
from bigbertha.documents import backfill, ingest, vectorstore
from bigbertha.documents.vectorstore import Index
from tests.documents.helpers import Env
from tests.documents.helpers import ingest as ingest_cli
from tests.services import Service

pytestmark = pytest.mark.slow  # loads the embedding model

DOCS = 40
WORDS = [
    "llama",
    "hay",
    "barn",
    "fence",
    "wool",
    "shearing",
    "vet",
    "pasture",
    "gate",
    "herd",
    "invoice",
    "refund",
    "badge",
]


def document(n: int, version: int = 1, rng: random.Random | None = None) -> bytes:
    rng = rng or random.Random(n)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
        for _ in range(rng.randint(1, 4))
    ]
    text = f"# Doc {n} v{version}\n\n" + "\n\n".join(paragraphs) + f"\n\nVersion {version}.\n"
    return text.encode()


def corpus(storage: Storage, bucket: str, docs: int = DOCS) -> str:
    """`docs` Markdown objects under a fresh prefix; the prefix URI."""
    prefix = f"bf-{uuid.uuid4().hex[:6]}/"
    for n in range(docs):
        storage.put(bucket, f"{prefix}doc-{n:03d}.md", document(n))
    return f"s3://{bucket}/{prefix}"


def rows(settings: settings_mod.Settings, prefix: str) -> list[dict[str, Any]]:
    """Every row under `prefix` (duplicated ids would show up twice)."""
    store = vectorstore.open_store(settings, create=False)
    expr = f"doc_id like {vectorstore.quote(prefix + '%')}"
    return list(
        store.client.query(
            settings.milvus.collection, filter=expr, output_fields=["id", "doc_id", "etag"]
        )
    )


def ids_by_source(settings: settings_mod.Settings, prefix: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in rows(settings, prefix):
        found.setdefault(row["doc_id"], []).append(row["id"])
    return {k: sorted(v) for k, v in found.items()}


def count(settings: settings_mod.Settings) -> int:
    store = vectorstore.open_store(settings, create=False)
    result = store.client.query(settings.milvus.collection, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def serial(settings: settings_mod.Settings, prefix: str) -> dict[str, list[str]]:
    """The chunk ids of a plain serial `ingest.run` of the prefix, in a collection of its own."""
    milvus = settings.milvus.model_copy(update={"collection": f"serial_{uuid.uuid4().hex[:8]}"})
    settings = settings.model_copy(update={"milvus": milvus})
    report = ingest.run(settings, [prefix])
    assert report.exit_code == 0, report.to_dict()["totals"]
    return ids_by_source(settings, prefix)


def test_two_concurrent_batches_write_exactly_the_chunks_of_a_serial_run(
    env: Env, storage: Storage, bucket: str, milvus_server: Service, tmp_path: Path
) -> None:
    uri = milvus_server.extra["uri"]
    settings = env(uri)
    prefix = corpus(storage, bucket)
    expected = serial(settings, prefix)
    assert len(expected) == DOCS
    running, peak = [0], [0]
    guard = threading.Lock()
    real = backfill.run_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    backfill.run_batch = counted  # type: ignore[assignment]
    try:
        merged = backfill.backfill(settings, prefix, batch_size=10, parallelism=2)
    finally:
        backfill.run_batch = real  # type: ignore[assignment]
    assert peak[0] == 2  # two batches ran at once, never more
    assert merged["batches"] == 4 and merged["exit_code"] == 0
    assert merged["totals"]["ingested"] == DOCS and merged["failures"] == []
    assert ids_by_source(settings, prefix) == expected
    assert count(settings) == sum(len(v) for v in expected.values())  # no duplicate rows

    # Again, as the Workflow runs it (list and split, one process per batch, fan in): nothing
    # is written twice, every document is unchanged.
    plan = tmp_path / "batches.json"
    result, _ = ingest_cli("--prefix", prefix, "--batch-size", "15", "--plan-out", str(plan))
    assert result.exit_code == 0, result.output
    planned = json.loads(plan.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == planned
    assert [b["count"] for b in planned] == [15, 15, 10]
    summaries = []
    for batch in planned:
        result, summary = ingest_cli("--batch", json.dumps(batch))
        assert result.exit_code == 0, result.output
        summaries.append(json.dumps(summary))  # Argo aggregates the outputs as strings
    result, report = ingest_cli("--merge", json.dumps(summaries))
    assert result.exit_code == 0, result.output
    assert report["totals"]["unchanged"] == DOCS and report["totals"]["chunks_added"] == 0
    assert ids_by_source(settings, prefix) == expected


def test_the_fan_in_report_names_every_rejected_document(
    env: Env, storage: Storage, bucket: str, milvus_server: Service
) -> None:
    env(milvus_server.extra["uri"])
    prefix = corpus(storage, bucket, docs=6)
    key = prefix.removeprefix(f"s3://{bucket}/")
    storage.put(bucket, key + "broken.pdf", b"%PDF-1.7 not really")
    storage.put(bucket, key + "tool.exe", b"MZ")
    result, report = ingest_cli("--prefix", prefix, "--batch-size", "3", "--parallelism", "2")
    assert result.exit_code == 3, result.output
    assert report["batches"] == 3 and report["totals"]["ingested"] == 6
    assert [f["source"] for f in report["failures"]] == [prefix + "broken.pdf", prefix + "tool.exe"]
    assert all(f["reason"] for f in report["failures"])


def test_a_writer_of_an_older_version_converges_to_the_newer_one_written_meanwhile(
    env: Env, storage: Storage, bucket: str, milvus_server: Service, monkeypatch: Any
) -> None:
    uri = milvus_server.extra["uri"]
    settings = env(uri)
    prefix = corpus(storage, bucket, docs=4)
    key = prefix.removeprefix(f"s3://{bucket}/") + "doc-001.md"
    target = f"s3://{bucket}/{key}"
    newer = document(1, version=2, rng=random.Random(99))

    # The backfill has read version 1 of doc-001 and is about to write it when version 2 is
    # uploaded and its event-driven ingest runs to the end.
    real_write = Index.write
    raced = []

    def write(self: Index, nodes: list[Any]) -> None:
        if not raced and any(n.metadata["source"] == target for n in nodes):
            raced.append(True)
            storage.put(bucket, key, newer)
            event = ingest.run(settings, [target], event_name="s3:ObjectCreated:Put")
            assert event.exit_code == 0
        real_write(self, nodes)

    with monkeypatch.context() as patched:
        patched.setattr(Index, "write", write)
        merged = backfill.backfill(settings, prefix, batch_size=2, parallelism=2)
    assert raced and merged["exit_code"] == 0

    etag = storage.stat(bucket, key).etag
    held = ids_by_source(settings, prefix)
    assert held == serial(settings, prefix)  # what a serial run of the bucket as it is now writes
    assert {r["etag"] for r in rows(settings, target)} == {etag}
    assert count(settings) == sum(len(v) for v in held.values())

    # And with real threads: backfill batches and event-driven ingests of new versions of
    # overlapping keys, all at once; the end state is the latest version of every object.
    keys = [prefix.removeprefix(f"s3://{bucket}/") + f"doc-{n:03d}.md" for n in range(4)]

    def uploads() -> None:
        for version in range(3, 6):
            for n, k in enumerate(keys):
                storage.put(bucket, k, document(n, version, random.Random(version * 10 + n)))
                ingest.run(settings, [f"s3://{bucket}/{k}"], event_name="s3:ObjectCreated:Put")

    events = threading.Thread(target=uploads)
    events.start()
    for _ in range(2):
        backfill.backfill(settings, prefix, batch_size=1, parallelism=2)
    events.join(120)
    held = ids_by_source(settings, prefix)
    assert held == serial(settings, prefix)
    for k in keys:
        etags = {r["etag"] for r in rows(settings, f"s3://{bucket}/{k}")}
        assert etags == {storage.stat(bucket, k).etag}
    assert count(settings) == sum(len(v) for v in held.values())


def test_a_batch_stopped_half_way_and_run_again_leaves_no_duplicate(
    env: Env, storage: Storage, bucket: str, milvus_server: Service, monkeypatch: Any
) -> None:
    uri = milvus_server.extra["uri"]
    # Small windows: the batch writes as it goes, so a stop leaves part of it written.
    settings = env(uri, ingest={"window_chunks": 2})
    prefix = corpus(storage, bucket, docs=12)
    ingest.run(settings, [prefix])
    # A new version of every other document, then a batch that dies after its 3rd write, with
    # new chunks written and the stale ones not yet deleted.
    key_prefix = prefix.removeprefix(f"s3://{bucket}/")
    for n in range(0, 12, 2):
        storage.put(bucket, f"{key_prefix}doc-{n:03d}.md", document(n, 2, random.Random(n + 50)))
    [batch] = backfill.plan(settings, prefix, batch_size=12)
    real_delete = Index.delete
    deletes = [0]

    def delete(self: Index, ids: list[str]) -> None:
        deletes[0] += 1
        if deletes[0] == 3:
            raise RuntimeError("killed")
        real_delete(self, ids)

    with monkeypatch.context() as patched, pytest.raises(RuntimeError, match="killed"):
        patched.setattr(Index, "delete", delete)
        backfill.run_batch(settings, batch)
    expected = serial(settings, prefix)
    assert ids_by_source(settings, prefix) != expected  # stopped half-way: stale chunks remain

    result, summary = ingest_cli("--batch", json.dumps(backfill.as_dict(batch)))
    assert result.exit_code == 0, result.output
    assert summary["totals"]["sources"] == 12 and summary["failures"] == []
    held = ids_by_source(settings, prefix)
    assert held == expected
    assert count(settings) == sum(len(v) for v in held.values())  # every id once
