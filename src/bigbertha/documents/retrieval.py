"""Retrieval: the top-k chunks of the Milvus collection that ingestion fills, for one question.

`Retriever.retrieve(question)` is the one entry point: the chatbot, the evaluation gate and
bench/retrieval.py get the same chunks. Steps (docs/retrieval.md):

1. search the LlamaIndex Milvus store (`vectorstore.open_store`) with the query embedding of the
   model ingestion used: dense (`chat.retrieval.mode: dense`) or hybrid, the dense request and
   Milvus' built-in BM25 full-text request fused in Milvus by RRF or weighted scores
   (`MilvusVectorStore._hybrid_search`, VectorStoreQueryMode.HYBRID), fused ties ordered by
   the question's content words each chunk holds, then by cosine (`Retriever._rank`);
2. give every candidate its dense cosine similarity to the question (in hybrid mode from its
   stored unit vector, which the search returns: `vectorstore.ChunkStore`), and drop those
   below `chat.similarity_cutoff` (hybrid: unless the passage shares a content word with the
   question; none at all when even the best is below);
3. optionally reorder them with a cross-encoder (`chat.retrieval.rerank_model`);
4. keep `chat.top_k`, in that order.

`Chunk.score` is always the dense cosine similarity, whatever ordered the chunks: fused ranks and
cross-encoder logits have no fixed scale, and the cutoff, the retrieval-score metric, its
low-relevance alert and the sources shown under an answer all mean "how close is this passage to
the question". The store is opened lazily and reopened after a failure, so a chatbot that started
while Milvus was down recovers on its own once Milvus is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.core.settings import Settings
from bigbertha.core.words import content_words

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


class Retrieved(list[Chunk]):
    """The chunks for the prompt, best first (a plain list of them), and `relevance`: the best
    `top_k` dense cosines among the candidates, best first, which telemetry records.

    In dense mode without a reranker the two hold the same scores. In hybrid mode a keyword hit
    further from the question may replace a closer chunk in the prompt, but `relevance` stays
    what dense retrieval would have scored, so the low-relevance alert's threshold, calibrated
    on dense scores, keeps its meaning (bench/retrieval.py measures both).
    """

    def __init__(self, chunks: list[Chunk], relevance: list[float]) -> None:
        super().__init__(chunks)
        self.relevance = relevance


class RerankerMissing(ConfigError):
    """`chat.retrieval.rerank_model` is set but no cross-encoder can be loaded from it."""


def load_reranker(settings: Settings) -> Any | None:
    """The cross-encoder named by `chat.retrieval.rerank_model`, or None when it is unset.

    Only a local directory or an s3:// prefix (downloaded to `rerank_dir`): an air-gapped
    install never reaches a model hub at run time, so a name that is neither is an error too.
    """
    r = settings.chat.retrieval
    if not r.rerank_model:
        return None
    where = f"chat.retrieval.rerank_model {r.rerank_model!r}"
    if r.rerank_model.startswith("s3://"):
        from bigbertha.core.storage import download_prefix

        try:
            path = download_prefix(settings, r.rerank_model, Path(r.rerank_dir))
        except ConfigError as exc:
            raise RerankerMissing(f"{where}: {exc}") from exc
    else:
        path = Path(r.rerank_model)
        if not path.is_dir():
            raise RerankerMissing(
                f"{where} is not a directory: set it to a local cross-encoder directory or an "
                f"s3:// prefix holding one, or unset it to retrieve without reranking"
            )
    from sentence_transformers import CrossEncoder

    try:
        # local_files_only: never a hub, even for a directory missing a file.
        return CrossEncoder(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RerankerMissing(f"{where}: no cross-encoder can be loaded from it ({first})") from exc


class Retriever:
    """Dense or hybrid retrieval, a similarity cutoff, optional reranking; thread-safe.

    One per process. A configured reranker that cannot be loaded raises RerankerMissing here,
    at start, so the process exits 2 instead of answering without it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        top_k: int | None = None,
        mode: Literal["dense", "hybrid"] | None = None,
        reranker: Any | None = None,
    ) -> None:
        # One attempt per question: a chat cannot wait out ingestion's retry back-off, and the
        # next question tries again anyway.
        self.settings = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"retries": 1})}
        )
        self.top_k = top_k or settings.chat.top_k
        self.cutoff = settings.chat.similarity_cutoff
        self.options = settings.chat.retrieval
        self.mode = mode or self.options.mode
        self.reranker = reranker if reranker is not None else load_reranker(settings)
        self._store: Any = None
        self._embed: Any = None
        self._warned = False
        self._lock = threading.Lock()

    def _open(self) -> tuple[Any, Any]:
        with self._lock:
            if self._store is None:
                from bigbertha.documents.embeddings import embed_model
                from bigbertha.documents.vectorstore import open_store

                self._embed = embed_model(self.settings)
                self._store = open_store(self.settings, create=False)
                self._configure(self._store)
            return self._store, self._embed

    def _configure(self, store: Any) -> None:
        """Point the store's hybrid search at our fusion settings."""
        if self.options.ranker == "rrf":
            store.hybrid_ranker, store.hybrid_ranker_params = "RRFRanker", {"k": self.options.rrf_k}
        else:
            w = self.options.dense_weight
            store.hybrid_ranker = "WeightedRanker"
            # The store sends [dense, sparse] requests in that order (_hybrid_search).
            store.hybrid_ranker_params = {"weights": [w, 1.0 - w]}

    def _search(self, question: str) -> tuple[list[Chunk], bool]:
        """Candidates best first by the mode's own order, each scored by dense cosine, and
        whether they were fused (hybrid) or dense only."""
        from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

        store, embed = self._open()
        hybrid = self.mode == "hybrid" and store.enable_sparse
        if self.mode == "hybrid" and not hybrid and not self._warned:
            self._warned = True  # open_store logged the reindex hint; say what we do instead
            log.warning(
                "chat.retrieval.mode is hybrid but the collection has no full-text "
                "index: retrieving dense only until `bigbertha reindex` runs"
            )
        wide = hybrid or self.reranker is not None
        n = max(self.top_k, self.options.candidates) if wide else self.top_k
        vector = embed.get_query_embedding(question)
        query = VectorStoreQuery(
            query_embedding=vector,
            query_str=question,
            similarity_top_k=n,
            mode=VectorStoreQueryMode.HYBRID if hybrid else VectorStoreQueryMode.DEFAULT,
        )
        result = store.query(query)
        nodes = result.nodes or []
        if hybrid:  # fused scores are ranks: the cosine comes from the stored unit vectors
            if any(node.embedding is None for node in nodes):
                raise RuntimeError("the hybrid search returned chunks without their vectors")
            scores = [
                sum(a * b for a, b in zip(vector, node.embedding, strict=True)) for node in nodes
            ]
            order = list(result.similarities or [0.0] * len(nodes))
        else:
            scores = list(result.similarities or [])
        chunks = [
            to_chunk(node.get_content(), score, dict(node.metadata))
            for node, score in zip(nodes, scores, strict=True)
        ]
        if hybrid:
            ranked = sorted(zip(order, chunks, strict=True), key=self._rank(question))
            chunks = [c for _, c in ranked]
        return chunks, hybrid

    @staticmethod
    def _rank(question: str) -> Callable[[tuple[float, Chunk]], tuple[float, int, float]]:
        """Fused order, ties broken by the question's content words the chunk holds, then by
        cosine. Each list's first scores 1/(k+1) under RRF, so the dense and the BM25 winner tie
        whenever neither is in the other list; Milvus orders such ties arbitrarily (a
        milvus-lite file and server put the demo's MinIO question's two first ones either way)."""
        asked = content_words(question)
        return lambda pair: (-pair[0], -len(asked & content_words(pair[1].text)), -pair[1].score)

    def retrieve(self, question: str) -> Retrieved:
        """Up to top_k chunks, best first; [] when none is close enough to the question (the
        cutoff); raises RetrievalUnavailable."""
        where = f"{self.settings.milvus.uri} collection {self.settings.milvus.collection}"
        try:
            found, fused = self._search(question)
        except ServiceUnavailable as exc:
            self._reset()
            raise RetrievalUnavailable(f"vector store {where}: {exc}") from exc
        except Exception as exc:  # pymilvus/grpc errors of every kind mean "cannot search now"
            self._reset()
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RetrievalUnavailable(f"vector store {where}: {first_line}") from exc
        if fused:
            # The cutoff judges the question first: the candidates hold the dense top ones, so
            # their best cosine is the collection's best and the question goes empty exactly
            # when dense would. A passage below it stays only as a keyword hit, sharing a content
            # word with the question: the exact name asked for may sit below the cutoff (bench:
            # the demo's MinIO question, its README answer at 0.19), while a passage that RRF
            # ranked on a far dense rank alone is noise under the answer.
            best = max((c.score for c in found), default=self.cutoff - 1)
            asked = content_words(question)
            kept = [
                c
                for c in found
                if best >= self.cutoff and (c.score >= self.cutoff or asked & content_words(c.text))
            ]
        else:
            kept = sorted(
                (c for c in found if c.score >= self.cutoff), key=lambda c: c.score, reverse=True
            )
        if self.reranker is not None and kept:
            logits = self.reranker.predict(
                [(question, c.text) for c in kept], show_progress_bar=False
            )
            order = sorted(range(len(kept)), key=lambda i: float(logits[i]), reverse=True)
            kept = [kept[i] for i in order]
        closest = sorted((c.score for c in found if c.score >= self.cutoff), reverse=True)
        return Retrieved(kept[: self.top_k], closest[: self.top_k] if kept else [])

    def _reset(self) -> None:
        with self._lock:
            self._store = None
