"""Retrieval: the top-k chunks of the Milvus collection that ingestion fills, for one question.

A LlamaIndex `VectorStoreIndex` over `bigbertha.documents.vectorstore.open_store` with the same
embedding model ingestion used (`bigbertha.documents.embeddings.embed_model`), `chat.top_k`
chunks per question, and a
`SimilarityPostprocessor` dropping chunks below `chat.similarity_cutoff`. The store is opened
lazily and reopened after a failure, so a chatbot that started while Milvus was down recovers on
its own once Milvus is back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from bigbertha.core.errors import ServiceUnavailable
from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)


class RetrievalUnavailable(ServiceUnavailable):
    """The vector store could not be searched (Milvus down, collection missing or mismatched)."""


@dataclass(frozen=True)
class Chunk:
    """One retrieved chunk with the metadata ingestion recorded for it."""

    text: str
    score: float
    source: str
    file_name: str
    page: int | None = None
    section: str | None = None
    chunk_index: int | None = None

    @property
    def label(self) -> str:
        """How the chunk is cited: document, then page or section when known."""
        parts = [self.file_name or self.source]
        if self.page is not None:
            parts.append(f"page {self.page}")
        if self.section:
            parts.append(f"section {self.section}")
        return ", ".join(parts)


def _as_int(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def to_chunk(text: str, score: float | None, metadata: dict[str, Any]) -> Chunk:
    """A chunk from a LlamaIndex node's text, score and metadata (keys per CONTRACT)."""
    source = str(metadata.get("source") or metadata.get("file_name") or "unknown")
    file_name = str(metadata.get("file_name") or source.rsplit("/", 1)[-1])
    section = metadata.get("section")
    return Chunk(
        text=text,
        score=float(score or 0.0),
        source=source,
        file_name=file_name,
        page=_as_int(metadata.get("page")),
        section=str(section) if section not in (None, "") else None,
        chunk_index=_as_int(metadata.get("chunk_index")),
    )


class Retriever:
    """Top-k retrieval with a similarity cutoff; thread-safe, one per process."""

    def __init__(self, settings: Settings, *, top_k: int | None = None) -> None:
        # One attempt per question: a chat cannot wait out ingestion's retry back-off, and the
        # next question tries again anyway.
        self.settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"retries": 1})}
        )
        self.top_k = top_k or settings.chat.top_k
        self.cutoff = settings.chat.similarity_cutoff
        self._retriever: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._retriever is None:
                from llama_index.core import VectorStoreIndex

                from bigbertha.documents.embeddings import embed_model
                from bigbertha.documents.vectorstore import open_store

                store = open_store(self.settings, create=False)
                index = VectorStoreIndex.from_vector_store(
                    store, embed_model=embed_model(self.settings)
                )
                self._retriever = index.as_retriever(similarity_top_k=self.top_k)
            return self._retriever

    def retrieve(self, question: str) -> list[Chunk]:
        """Chunks scoring at least the cutoff, best first; raises RetrievalUnavailable."""
        from llama_index.core.postprocessor import SimilarityPostprocessor

        where = f"{self.settings.milvus.uri} collection {self.settings.milvus.collection}"
        try:
            nodes = self._open().retrieve(question)
        except ServiceUnavailable as exc:
            self._reset()
            raise RetrievalUnavailable(f"vector store {where}: {exc}") from exc
        except Exception as exc:  # pymilvus/grpc errors of every kind mean "cannot search now"
            self._reset()
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RetrievalUnavailable(f"vector store {where}: {first_line}") from exc
        kept = SimilarityPostprocessor(similarity_cutoff=self.cutoff).postprocess_nodes(nodes)
        chunks = [to_chunk(n.node.get_content(), n.score, dict(n.node.metadata)) for n in kept]
        return sorted(chunks, key=lambda c: c.score, reverse=True)

    def _reset(self) -> None:
        with self._lock:
            self._retriever = None
