"""`bigbertha ingest` end to end against a real S3 server (moto) and Milvus (milvus-lite).

Upload, ingest, retrieve by a question; ingest twice (nothing changes); change the object (its
old chunks go); delete (nothing is left); every bad input alone and mixed in a batch (one line,
a JSON report, a dead-letter copy, existing vectors kept, exit 3); fatal errors (exit 1).
The embedding model is loaded once per test process (embeddings.embed_model caches it).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import settings as settings_mod
from bigbertha.core.errors import ExitCode
from bigbertha.core.storage import Storage
from bigbertha.documents.chunking import chunk_id
from bigbertha.documents.report import Outcome, Progress
from tests.documents.helpers import Env, chunks, full_text_hits, ingest, make_docx, make_pdf
from tests.services import Service, free_port

pytestmark = pytest.mark.slow  # loads the embedding model


def ask(settings: settings_mod.Settings, question: str) -> list[Any]:
    """Retrieve as the chatbot does: LlamaIndex over the same store and embedding model."""
    from llama_index.core import VectorStoreIndex

    from bigbertha.documents import embeddings, vectorstore

    index = VectorStoreIndex.from_vector_store(
        vectorstore.open_store(settings, create=False),
        embed_model=embeddings.embed_model(settings),
    )
    return list(index.as_retriever(similarity_top_k=2).retrieve(question))


HANDBOOK_V1 = (
    "# Llama care\n\n## Feeding\n\nThe llamas on the BigBertha farm eat timothy hay twice a day."
    "\n\n## Shearing\n\nShear every llama in April, before the summer heat.\n"
)


def test_upload_ingest_ask_reingest_change_delete(
    env: Env, storage: Storage, bucket: str, milvus_server: Service
) -> None:
    settings = env(milvus_server.extra["uri"])  # the server, as in the cluster
    key = "handbook/llama care 2026 café.md"
    uri = f"s3://{bucket}/{key}"
    storage.put(bucket, key, HANDBOOK_V1.encode())
    storage.put(bucket, "handbook/office.md", b"# Office\n\nThe coffee machine is on floor 3.\n")

    result, report = ingest("--event-name", "s3:ObjectCreated:Put", uri)
    assert result.exit_code == 0, result.output
    assert report["totals"]["ingested"] == 1 and report["rejected"] == []
    top = ask(settings, "What do the llamas eat?")[0]
    assert "timothy hay" in top.node.text
    etag = storage.stat(bucket, key).etag
    assert top.node.metadata["source"] == uri
    assert top.node.metadata["file_name"] == "llama care 2026 café.md"
    assert top.node.metadata["section"] == "Llama care > Feeding"
    assert top.node.metadata["etag"] == etag
    assert top.node.metadata["page"] is None
    first = chunks(settings, uri)
    assert sorted(r["chunk_index"] for r in first.values()) == [0, 1, 2]
    assert all(chunk_id(uri, r["chunk_index"], r["text"]) == i for i, r in first.items())

    # The same object again: nothing is written.
    result, report = ingest("--event-name", "s3:ObjectCreated:Put", uri)
    assert result.exit_code == 0 and report["results"][0]["status"] == "unchanged"
    assert chunks(settings, uri) == first

    # A new version: the changed chunk is replaced, the unchanged ones carry the new etag.
    storage.put(bucket, key, HANDBOOK_V1.replace("timothy hay", "alfalfa pellets").encode())
    result, report = ingest("--event-name", "s3:ObjectCreated:Put", uri)
    assert result.exit_code == 0
    assert report["results"][0] | {"reason": None} == {
        "source": uri,
        "status": "ingested",
        "chunks": 3,
        "added": 1,
        "removed": 1,
        "reason": None,
        "dead_letter": None,
    }
    second = chunks(settings, uri)
    assert len(second) == 3 and len(set(second) & set(first)) == 2
    assert not any("timothy" in r["text"] for r in second.values())
    assert {r["etag"] for r in second.values()} == {storage.stat(bucket, key).etag}
    assert "alfalfa pellets" in ask(settings, "What do the llamas eat?")[0].node.text
    # The BM25 side (hybrid retrieval) follows: Milvus derives it from the stored text.
    assert full_text_hits(settings, "timothy") == []
    assert [t for t in full_text_hits(settings, "alfalfa") if "alfalfa pellets" in t]

    # A delete event removes every chunk of that object and nothing else.
    other = f"s3://{bucket}/handbook/office.md"
    assert ingest(other)[0].exit_code == 0
    storage.remove(bucket, key)
    result, report = ingest("--event-name", "s3:ObjectRemoved:Delete", uri)
    assert result.exit_code == 0, result.output
    assert report["results"] == [
        {
            "source": uri,
            "status": "deleted",
            "chunks": 0,
            "added": 0,
            "removed": 3,
            "reason": None,
            "dead_letter": None,
        }
    ]
    assert chunks(settings, uri) == {}
    assert len(chunks(settings, other)) == 1
    assert full_text_hits(settings, "alfalfa llama shear") == []  # the office note shares none


GOOD_TEXT = "Llamas hum to each other when they are curious."
BIG = ("word " * 100).encode()
BAD_INPUTS = [
    # key, a good version of it (None: there can be none), the bad bytes (None: deleted), reason
    ("empty.txt", GOOD_TEXT.encode(), b"", "empty file (0 bytes)"),
    ("corrupt.pdf", make_pdf([GOOD_TEXT]), make_pdf([GOOD_TEXT])[:300], "corrupt PDF"),
    ("locked.pdf", make_pdf([GOOD_TEXT]), make_pdf(["x"], password="pw"), "encrypted PDF"),
    ("blob.txt", GOOD_TEXT.encode(), bytes(range(256)) * 8, "binary data under a text extension"),
    ("photo.png", None, b"\x89PNG\r\n\x1a\n" + bytes(64), "unsupported file type '.png'"),
    ("huge.md", GOOD_TEXT.encode(), BIG, "too large: 500 bytes > ingest.max_bytes (300)"),
    ("latin1.txt", GOOD_TEXT.encode(), "crème brûlée".encode("latin-1"), "not UTF-8"),
    ("report.docx", make_docx([("p", GOOD_TEXT)]), b"PK\x03\x04garbage", "corrupt DOCX"),
    ("gone.md", GOOD_TEXT.encode(), None, "object not found"),
]


@pytest.mark.parametrize(
    ("name", "good", "bad", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_each_bad_input_is_rejected_reported_dead_lettered_and_loses_nothing(
    env: Env,
    storage: Storage,
    bucket: str,
    tmp_path: Path,
    name: str,
    good: bytes | None,
    bad: bytes | None,
    reason: str,
) -> None:
    settings = env(ingest={"max_bytes": 300} if name == "huge.md" else {})
    key = f"one/{uuid.uuid4().hex[:6]} {name}"
    uri = f"s3://{bucket}/{key}"
    before: dict[str, Any] = {}
    if good is not None:  # a good version is indexed first: it must survive the bad one
        storage.put(bucket, key, good)
        assert ingest(uri)[0].exit_code == 0
        before = chunks(settings, uri)
        assert before
    if bad is None:
        storage.remove(bucket, key)
    else:
        storage.put(bucket, key, bad)

    result, report = ingest("--report", str(tmp_path / "report.json"), uri)

    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if f"rejected {uri}:" in line]
    assert len(lines) == 1 and uri in lines[0] and reason in lines[0]
    assert report == json.loads((tmp_path / "report.json").read_text())
    [rejected] = report["rejected"]
    assert rejected["source"] == uri and reason in rejected["reason"]
    if bad is None:
        assert rejected["dead_letter"] is None  # nothing left to copy
    else:
        assert rejected["dead_letter"] == f"s3://{bucket}/dead-letter/{key}"
        assert storage.get(bucket, f"dead-letter/{key}") == bad
        note = json.loads(storage.get(bucket, f"dead-letter/{key}.reason.json"))
        assert note["source"] == uri and reason in note["reason"]
    if before:
        assert chunks(settings, uri) == before


def test_mixed_batch_ingests_the_good_and_rejects_the_bad(
    env: Env, storage: Storage, bucket: str
) -> None:
    settings = env(ingest={"dead_letter_prefix": "quarantine/"})
    prefix = f"batch-{uuid.uuid4().hex[:6]}/"
    good = {
        "notes.md": b"# Notes\n\nThe vet visits on Tuesdays.\n",
        "page.html": b"<html><body><h1>Barn</h1><p>The barn door sticks.</p></body></html>",
        "manual.pdf": make_pdf(["Page one: feeding.", "Page two: water troughs."]),
        "policy.docx": make_docx([("h1", "Policy"), ("p", "No llamas in the kitchen.")]),
        "plain.txt": b"Plain text is fine too.",
    }
    bad = {"empty.txt": b"", "locked.pdf": make_pdf(["x"], password="pw"), "app.exe": b"MZ\x90"}
    for name, data in {**good, **bad}.items():
        storage.put(bucket, prefix + name, data)

    result, report = ingest(f"s3://{bucket}/{prefix}")

    assert result.exit_code == 3, result.output
    assert report["totals"] | {"chunks_added": 0} == {
        "sources": 8,
        "ingested": 5,
        "unchanged": 0,
        "deleted": 0,
        "rejected": 3,
        "skipped": 0,
        "chunks_added": 0,
        "chunks_removed": 0,
    }
    assert sorted(r["source"] for r in report["rejected"]) == sorted(
        f"s3://{bucket}/{prefix}{name}" for name in bad
    )
    for name in bad:
        assert storage.get(bucket, f"quarantine/{prefix}{name}") == bad[name]
    pdf = chunks(settings, f"s3://{bucket}/{prefix}manual.pdf").values()
    assert sorted(r["page"] for r in pdf) == [1, 2]
    docx = chunks(settings, f"s3://{bucket}/{prefix}policy.docx").values()
    assert [r["section"] for r in docx] == ["Policy"]

    # The dead-letter copies are never ingested, even when their prefix is listed.
    result, report = ingest(f"s3://{bucket}/quarantine/{prefix}")
    assert result.exit_code == 0
    assert {r["status"] for r in report["results"]} == {"skipped"}

    result, report = ingest("--delete", f"s3://{bucket}/{prefix}")
    assert result.exit_code == 0
    assert report["totals"]["deleted"] == 5
    assert all(not chunks(settings, f"s3://{bucket}/{prefix}{name}") for name in good)


def test_local_directory_ingest_and_delete(env: Env, tmp_path: Path) -> None:
    settings = env()
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# A\n\nAlpha document.\n")
    (docs / "sub" / "b.pdf").write_bytes(make_pdf(["Bravo page one.", "Bravo page two."]))
    (docs / ".hidden.md").write_text("# Hidden\n\nnot ingested\n")

    result, report = ingest(str(docs))
    assert result.exit_code == 0, result.output
    assert sorted(r["source"] for r in report["results"]) == [
        f"file://{docs}/a.md",
        f"file://{docs}/sub/b.pdf",
    ]
    assert len(chunks(settings, f"file://{docs}/sub/b.pdf")) == 2

    result, report = ingest("--delete", str(docs))
    assert result.exit_code == 0
    assert report["totals"]["chunks_removed"] == 3
    assert not chunks(settings, f"file://{docs}/a.md")


@pytest.mark.parametrize(
    ("model", "dim"), [("other-model", 384), ("all-MiniLM-L6-v2", 8)], ids=["model", "dim"]
)
def test_embedding_mismatch_fails_before_any_write(
    env: Env, tmp_path: Path, model: str, dim: int
) -> None:
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from bigbertha.documents.vectorstore import DIM_PROPERTY, MODEL_PROPERTY

    settings = env(milvus_uri=str(tmp_path / "mismatch.db"))
    store = MilvusVectorStore(
        uri=settings.milvus.uri,
        collection_name=settings.milvus.collection,
        dim=dim,
        collection_properties={MODEL_PROPERTY: model, DIM_PROPERTY: str(dim)},
        use_async_client=False,
    )
    store.client.close()
    (tmp_path / "a.md").write_text("# A\n\nSome text.\n")

    result, _ = ingest(str(tmp_path / "a.md"))

    assert result.exit_code == ExitCode.CONFIG
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: collection") and f"{model} vectors of dim {dim}" in line
    assert "embeddings.model is all-MiniLM-L6-v2 (dim 384)" in line
    from pymilvus import MilvusClient

    client = MilvusClient(uri=settings.milvus.uri)
    stats = client.get_collection_stats(settings.milvus.collection)
    client.close()
    assert stats["row_count"] == 0


def test_unreachable_storage_is_fatal_after_retries(env: Env, tmp_path: Path) -> None:
    env(s3={"endpoint": f"127.0.0.1:{free_port()}"})
    result, _ = ingest("--report", str(tmp_path / "r.json"), "s3://bucket/prefix/")
    assert result.exit_code == ExitCode.UNAVAILABLE  # transient: the workflow retries it
    assert "error: object storage list s3://bucket/prefix/: still failing after 2 attempts" in (
        result.stderr
    )
    assert json.loads((tmp_path / "r.json").read_text())["fatal"].startswith("object storage")


def test_unreachable_milvus_is_fatal_after_retries(env: Env, tmp_path: Path) -> None:
    env(milvus_uri=f"http://127.0.0.1:{free_port()}")
    (tmp_path / "a.md").write_text("# A\n\ntext\n")
    result, _ = ingest(str(tmp_path / "a.md"))
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "still failing after 2 attempts" in result.stderr.strip().splitlines()[-1]


def test_progress_is_json_lines_off_a_terminal_and_a_bar_on_one(env: Env, tmp_path: Path) -> None:
    env()
    for name in ("a.md", "b.md", "c.bin"):
        (tmp_path / name).write_text(f"# {name}\n\ncontent {name}\n")
    result, _ = ingest(str(tmp_path / "a.md"), str(tmp_path / "b.md"), str(tmp_path / "c.bin"))
    assert result.exit_code == 3
    progress = [
        json.loads(line)["progress"] for line in result.stderr.splitlines() if '"progress"' in line
    ]
    assert [(p["done"], p["total"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert {p["status"] for p in progress} == {"ingested", "rejected"}

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(2, stream=screen)
    bar.update(Outcome("s3://b/a.md", "ingested"))
    bar.update(Outcome("s3://b/b.md", "unchanged"))
    bar.close()
    assert "2/2" in screen.getvalue() and "{" not in screen.getvalue()


def test_query_escaped_keys_and_unknown_events(env: Env, storage: Storage, bucket: str) -> None:
    settings = env()
    key = "escaped/año 2026+plan.md"
    storage.put(bucket, key, b"# Plan\n\nBuy more hay.\n")
    escaped = "escaped%2Fa%C3%B1o+2026%2Bplan.md"  # Go's url.QueryEscape of the key

    result, report = ingest("--key-encoding", "query", f"s3://{bucket}/{escaped}")
    assert result.exit_code == 0, result.output
    assert report["results"][0]["source"] == f"s3://{bucket}/{key}"
    assert chunks(settings, f"s3://{bucket}/{key}")

    result, _ = ingest("--event-name", "s3:ObjectAccessed:Get", f"s3://{bucket}/{key}")
    assert result.exit_code == 2
    assert "expected s3:ObjectCreated:* or s3:ObjectRemoved:*" in result.stderr


def test_long_sections_are_split_to_the_chunk_size_without_tokenizer_warnings(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from bigbertha.documents import readers
    from bigbertha.documents.chunking import Chunker
    from bigbertha.documents.embeddings import DEFAULT_MODEL, load_sentence_transformer

    # A fresh tokenizer: transformers warns once per instance, so a shared one could hide it.
    tokenizer = load_sentence_transformer(DEFAULT_MODEL).tokenizer
    settings = settings_mod.load(overrides={"ingest": {"chunk_size": 64, "chunk_overlap": 8}})
    text = " ".join(f"Sentence number {i} is about llamas and their fences." for i in range(200))
    capfd.readouterr()
    nodes = Chunker(settings, tokenizer).chunks(
        "file:///long.md", "long.md", [readers.Section(text=text)], "etag", None
    )
    assert len(nodes) > 20
    assert all(len(tokenizer.tokenize(n.text, verbose=False)) <= 64 for n in nodes)
    assert "Sentence number 199 " in nodes[-1].text
    assert "longer than the specified maximum" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, ExitCode.TERMINATED), (signal.SIGINT, ExitCode.INTERRUPTED)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_stopped_ingest_writes_its_report_and_a_log_line_and_exits_with_its_code(
    env: Env, tmp_path: Path, sig: signal.Signals, code: ExitCode
) -> None:
    """A real `bigbertha ingest` process is signalled mid-batch (Kubernetes stops a pod with
    SIGTERM): what it did is in the report and the log, and a rerun finishes the batch."""
    # Each source is written as soon as it is embedded; a milvus-lite file of its own, which
    # only one process may hold at a time.
    env(milvus_uri=str(tmp_path / "stopped.db"), ingest={"window_chunks": 1})
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(150):
        (docs / f"doc-{n:03d}.md").write_text(f"# Doc {n}\n\nThe llama number {n} eats hay.\n")
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bigbertha", "ingest", str(docs), "--report", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    log = []
    for line in process.stderr:  # wait until it is part-way through the batch
        log.append(line)
        if '"progress"' in line and json.loads(line)["progress"]["done"] >= 3:
            break
    process.send_signal(sig)
    rest, errors = process.communicate(timeout=120)
    log.append(errors)
    text = "".join(log)
    assert process.returncode == code, text[-3000:]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == code and doc["fatal"].startswith(f"interrupted by {sig.name}")
    done = doc["totals"]["ingested"]
    assert 3 <= done < 150
    assert f"stopped by {sig.name} after {done} sources" in text
    assert f"error: interrupted by {sig.name}" in text

    if sig == signal.SIGTERM:  # idempotent: the rerun does only what was left
        result, again = ingest(str(docs))
        assert result.exit_code == 0, result.output
        assert again["totals"]["unchanged"] >= done and again["totals"]["sources"] == 150
