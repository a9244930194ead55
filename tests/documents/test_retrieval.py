"""Retrieval: chunk metadata as ingestion writes it, citation labels, and a store that is not
there yet (answered as 'search unavailable', not a crash). Top-k, the similarity cutoff and real
Milvus searches are exercised end to end in test_rag.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigbertha.core.settings import Settings
from bigbertha.documents.retrieval import RetrievalUnavailable, Retriever, to_chunk


def test_chunk_reads_ingestion_metadata_and_cites_page_or_section() -> None:
    chunk = to_chunk(
        "Refunds are paid within 5 business days.",
        0.8123,
        {
            "source": "s3://docs/policies/handbook.pdf",
            "file_name": "handbook.pdf",
            "page": "3",  # Milvus dynamic fields may come back as strings
            "section": "Refunds",
            "chunk_index": 7,
            "etag": "abc",
        },
    )
    assert (chunk.page, chunk.section, chunk.chunk_index) == (3, "Refunds", 7)
    assert chunk.label == "handbook.pdf, page 3, section Refunds"
    bare = to_chunk("text", None, {"source": "s3://docs/notes.txt", "page": "", "section": ""})
    assert bare.label == "notes.txt" and bare.score == 0.0 and bare.page is None


def test_nothing_ingested_yet_is_search_unavailable_with_the_fix(tmp_path: Path) -> None:
    settings = Settings(milvus={"uri": str(tmp_path / "none.db"), "collection": "docs"})
    with pytest.raises(RetrievalUnavailable, match="run `bigbertha ingest` first"):
        Retriever(settings).retrieve("anything?")


def test_chat_does_not_wait_out_ingestion_retries() -> None:
    settings = Settings(ingest={"retries": 5})
    assert Retriever(settings).settings.ingest.retries == 1
    assert Retriever(settings, top_k=9).top_k == 9 and Retriever(settings).top_k == 4
