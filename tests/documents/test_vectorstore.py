"""The chunk collection's full-text side: a collection from before hybrid retrieval (dense
vectors only) is detected when opened, keeps working, and `bigbertha reindex` gives it the BM25
index from its own rows, losing nothing, after which ingestion stays exactly-once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core import settings as settings_mod
from bigbertha.documents import ingest, vectorstore
from bigbertha.documents.retrieval import Retriever
from tests.documents.helpers import Env, full_text_hits

pytestmark = pytest.mark.slow  # loads the embedding model

DOC = (
    "# Barn\n\n## Feeding\n\nThe llamas eat timothy hay twice a day.\n\n"
    "## Gate code\n\nThe barn gate opens with code ZX81 after dusk.\n"
)


def legacy_collection(settings: settings_mod.Settings) -> None:
    """An empty collection as open_store created it before hybrid retrieval (no BM25)."""
    from llama_index.vector_stores.milvus import MilvusVectorStore

    MilvusVectorStore(
        uri=settings.milvus.uri,
        collection_name=settings.milvus.collection,
        dim=384,
        embedding_field=vectorstore.EMBEDDING_FIELD,
        text_key=vectorstore.TEXT_FIELD,
        similarity_metric="COSINE",
        upsert_mode=True,
        collection_properties={
            vectorstore.MODEL_PROPERTY: "all-MiniLM-L6-v2",
            vectorstore.DIM_PROPERTY: "384",
        },
        index_config={},
        consistency_level="Strong",
        use_async_client=False,
    )


def rows(settings: settings_mod.Settings) -> dict[str, dict[str, Any]]:
    store = vectorstore.open_store(settings, create=False)
    found = store.client.query(settings.milvus.collection, filter="", output_fields=["*"])
    return {r["id"]: {k: v for k, v in r.items() if k != vectorstore.SPARSE_FIELD} for r in found}


def test_a_dense_only_collection_is_detected_and_reindexed_losing_nothing(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = env(str(tmp_path / "legacy.db"))
    doc = tmp_path / "barn.md"
    doc.write_text(DOC, encoding="utf-8")
    legacy_collection(settings)

    # Opening it says so in one line naming the command, and nothing stops working meanwhile.
    with caplog.at_level(logging.WARNING):
        assert ingest.run(settings, [str(doc)]).exit_code == 0
    hints = [r.getMessage() for r in caplog.records if "full-text index" in r.getMessage()]
    assert hints and "\n" not in hints[0] and "run `bigbertha reindex`" in hints[0]
    assert not vectorstore.open_store(settings, create=False).enable_sparse
    question = "What is the gate code of the barn?"
    assert "ZX81" in Retriever(settings).retrieve(question)[0].text  # hybrid asked: dense served
    before = rows(settings)
    assert len(before) == 3  # the title, Feeding, Gate code

    # A partial copy left by an interrupted reindex is discarded, the original being intact.
    stray = settings.milvus.collection + vectorstore.REINDEX_SUFFIX
    vectorstore.open_store(settings, create=True, name=stray).client.insert(
        stray, [{**next(iter(before.values())), "id": "stray"}]
    )

    result = CliRunner().invoke(app, ["reindex"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "collection": settings.milvus.collection,
        "rows": 3,
    }
    after = rows(settings)
    assert after.keys() == before.keys()  # the stray row did not come along
    for key, row in before.items():
        assert after[key].pop(vectorstore.EMBEDDING_FIELD) == pytest.approx(
            row.pop(vectorstore.EMBEDDING_FIELD)
        )
        assert after[key] == row  # text and every metadata field as stored
    assert vectorstore.open_store(settings, create=False).enable_sparse
    assert any("ZX81" in t for t in full_text_hits(settings, "ZX81"))

    # Exactly-once still: the same document again writes nothing; a second reindex neither.
    report = ingest.run(settings, [str(doc)])
    assert [o.status for o in report.outcomes] == ["unchanged"]
    again = CliRunner().invoke(app, ["reindex"])
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["rows"] == 0


def test_reindex_of_a_collection_that_does_not_exist_is_a_config_error(
    env: Env, tmp_path: Path
) -> None:
    env(str(tmp_path / "none.db"))
    result = CliRunner().invoke(app, ["reindex"])
    assert result.exit_code == 2
    assert "nothing to reindex" in result.output


def test_writers_that_start_together_on_an_empty_milvus_all_open_one_collection(
    env: Env, milvus_server: Any
) -> None:
    # Ingest workflows started by one upload burst (the demo's, a backfill's) find no collection
    # and create it at once: the losers' create_index met the winner's index and failed.
    import threading

    from pymilvus import MilvusClient

    settings = env(milvus_server.extra["uri"])
    writers = 4
    start = threading.Barrier(writers)
    failed: list[BaseException] = []

    def writer() -> None:
        start.wait()
        try:
            vectorstore.open_store(settings, create=True)
        except BaseException as exc:  # collected: the assertion shows every writer's error
            failed.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failed, [f"{type(e).__name__}: {e}" for e in failed]
    client = MilvusClient(uri=settings.milvus.uri)
    try:
        info = client.describe_collection(settings.milvus.collection)
        assert vectorstore.full_text(info)  # the winner's collection, BM25 side included
        assert sorted(client.list_indexes(settings.milvus.collection)) == [
            vectorstore.EMBEDDING_FIELD,
            vectorstore.SPARSE_FIELD,
        ]
    finally:
        client.close()
