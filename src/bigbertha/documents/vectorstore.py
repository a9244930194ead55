"""The Milvus collection that holds document chunks (llama-index-vector-stores-milvus).

`milvus.uri` is a milvus-lite file locally and a Milvus server URI in the cluster. A collection
records the embedding model and dimension it was built with (collection properties); opening it
with a different model is an error before anything is written, because mixing vector spaces
silently ruins retrieval.

Layout: primary key `id` (chunk id), `doc_id` (the source URI, so a source's chunks are found and
deleted with one expression), `text`, `embedding` (unit vectors, cosine metric), and the chunk
metadata (source, etag, version_id, page, section, chunk_index, file_name) as dynamic fields.

Full text: every collection created here also holds `sparse_embedding`, the output of Milvus'
built-in BM25 function over `text` (LlamaIndex: `enable_sparse` with `BM25BuiltInFunction`).
Milvus computes it on insert from the text itself, so an upsert or delete keeps the dense and the
full-text side exact with no second write. Supported by Milvus >= 2.5 (the subchart pins
milvusdb/milvus v2.6.15, /work/shared/upstream/milvus-5.0.19/values.yaml `image.all.tag`) and by
milvus-lite 3.2.2 (checked: `describe_collection` lists the BM25 function and `hybrid_search`
with an RRF ranker answers; `tests/documents/test_retrieval.py`). A collection from before has no
such field: `full_text` says so and `bigbertha reindex` (`reindex`) rebuilds it from its own
stored rows, losing nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.core.storage import retry

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.milvus import MilvusVectorStore
    from pymilvus import MilvusClient

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_PROPERTY = "bigbertha.embedding_model"
DIM_PROPERTY = "bigbertha.embedding_dim"
EMBEDDING_FIELD = "embedding"
TEXT_FIELD = "text"
SPARSE_FIELD = "sparse_embedding"
SOURCE_FIELD = "doc_id"  # LlamaIndex's ref-doc field; we set a chunk's ref doc to its source URI
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


class CollectionMissing(ConfigError):
    """The collection does not exist yet (nothing has been ingested)."""


class EmbeddingMismatch(ConfigError):
    """The collection was built with another embedding model or dimension."""


def reindex_hint(settings: Settings) -> str:
    """The one-line message for a collection without the BM25 full-text index."""
    return (
        f"collection {settings.milvus.collection!r} at {settings.milvus.uri} has no BM25 "
        f"full-text index (it was built before hybrid retrieval): run `bigbertha reindex` to "
        f"add it (nothing is re-embedded or lost; docs/retrieval.md)"
    )


def full_text(info: dict[str, Any]) -> bool:
    """Whether a described collection has the BM25 function writing SPARSE_FIELD from TEXT_FIELD."""
    for fn in info.get("functions") or []:
        if SPARSE_FIELD in fn.get("output_field_names", []) and TEXT_FIELD in fn.get(
            "input_field_names", []
        ):
            return True
    return False


def is_server(uri: str) -> bool:
    """A Milvus server URI, as opposed to a milvus-lite file path."""
    return uri.startswith(_SERVER_SCHEMES)


def quote(value: str) -> str:
    """A Milvus expression string literal (milvus-lite has no filter templates)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def milvus_transient(exc: BaseException) -> bool:
    """Connection-level failures; a bad expression or schema is not worth retrying."""
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, MilvusException):
        message = str(exc.message).lower()
        return exc.code in (2, 8) or any(
            word in message for word in ("unavailable", "connect", "deadline", "timeout")
        )
    return isinstance(exc, ConnectionError | TimeoutError)


CREATE_RACE_TRIES = 5


def _created_meanwhile(exc: BaseException) -> bool:
    """Milvus refusing to create what another writer just created: a collection or an index
    (Milvus: "already exists"; milvus-lite: its collection directory, errno 17)."""
    from pymilvus.exceptions import MilvusException

    message = str(getattr(exc, "message", "")).lower()
    return isinstance(exc, MilvusException) and (
        "already exist" in message or "errno 17" in message
    )


def call(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """Run a Milvus call with the ingest retry policy; ServiceUnavailable when it stays down."""
    return retry(
        fn,
        what=f"Milvus {settings.milvus.uri} {what}",
        transient=milvus_transient,
        attempts=settings.ingest.retries,
        backoff=settings.ingest.retry_backoff_seconds,
    )


def model_id(name: str) -> str:
    """The name recorded in the collection (aliases of the packaged default are one model)."""
    from bigbertha.documents.embeddings import DEFAULT_MODEL

    return DEFAULT_MODEL if name == f"sentence-transformers/{DEFAULT_MODEL}" else name


def _connect_args(settings: Settings) -> dict[str, Any]:
    token = settings.milvus.token.get_secret_value() if settings.milvus.token else ""
    return {"uri": settings.milvus.uri, "token": token}


def check_collection(
    client: MilvusClient, settings: Settings, dim: int, name: str | None = None
) -> dict[str, Any] | None:
    """The collection's description if it exists and matches model and dim; None if it does not
    exist. Raises EmbeddingMismatch when it exists with another model or dimension.
    """
    name = name or settings.milvus.collection
    if not call(settings, "list collections", lambda: client.has_collection(name)):
        return None
    info = call(settings, f"describe {name}", lambda: client.describe_collection(name))
    fields = {f["name"]: f for f in info.get("fields", [])}
    stored_dim = int(fields.get(EMBEDDING_FIELD, {}).get("params", {}).get("dim", 0))
    props = info.get("properties") or {}
    stored_model = props.get(MODEL_PROPERTY)
    wanted = model_id(settings.embeddings.model)
    where = f"collection {name!r} at {settings.milvus.uri}"
    if stored_dim != dim or (stored_model and stored_model != wanted):
        raise EmbeddingMismatch(
            f"{where} holds {stored_model or 'an unrecorded model'} vectors of dim {stored_dim}, "
            f"but embeddings.model is {wanted} (dim {dim}): set embeddings.model back, or set "
            f"milvus.collection to a new name and re-ingest"
        )
    if not stored_model:
        log.warning("%s does not record its embedding model; dims match (%d)", where, dim)
    return dict(info)


@cache
def _store_class() -> type[MilvusVectorStore]:
    from llama_index.vector_stores.milvus import MilvusVectorStore

    class ChunkStore(MilvusVectorStore):
        """LlamaIndex's Milvus store, whose search results keep each chunk's stored vector.

        Its searches already ask for every field (`_prepare_before_search`: output_fields
        ["*"]), the vector included, but `_parse_from_milvus_results` drops it. Hybrid
        retrieval scores each fused chunk by its cosine to the question (retrieval.py), and
        taking the vector from the search saves reading it again (3.7 ms a question).
        """

        def _parse_from_milvus_results(
            self, results: list[Any]
        ) -> tuple[list[Any], list[float], list[str]]:
            nodes, similarities, ids = super()._parse_from_milvus_results(results)
            for node, hit in zip(nodes, results[0] if results else [], strict=True):
                vector = hit["entity"].get(self.embedding_field)
                node.embedding = None if vector is None else [float(x) for x in vector]
            return nodes, similarities, ids

    return ChunkStore


def open_store(settings: Settings, *, create: bool, name: str | None = None) -> MilvusVectorStore:
    """The chunk collection (or collection `name`) as a LlamaIndex vector store.

    create=False (retrieval): CollectionMissing if nothing was ingested yet. create=True
    (ingestion): the collection is created, recording the embedding model and dimension, with
    the BM25 full-text index. Either way EmbeddingMismatch if it was built with another model.
    `store.enable_sparse` says whether the collection has the full-text index: one from before
    hybrid retrieval is opened without it (a warning names `bigbertha reindex`), so ingestion
    and dense retrieval go on working on it.
    """
    from llama_index.vector_stores.milvus.utils import BM25BuiltInFunction
    from pymilvus import MilvusClient

    from bigbertha.documents.embeddings import dimension, embed_model

    uri = settings.milvus.uri
    name = name or settings.milvus.collection
    if not is_server(uri):
        if not create and not Path(uri).exists():
            raise CollectionMissing(
                f"milvus-lite file {uri} does not exist: run `bigbertha ingest` first"
            )
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    dim = dimension(embed_model(settings))
    client = call(settings, "connect", lambda: MilvusClient(**_connect_args(settings), timeout=10))
    try:
        info = check_collection(client, settings, dim, name)
    finally:
        if is_server(uri):
            client.close()  # a milvus-lite client shares its process with the store below
    exists = info is not None
    sparse = info is None or full_text(info)
    if not sparse:
        log.warning(reindex_hint(settings))
    if not exists and not create:
        raise CollectionMissing(
            f"collection {name!r} does not exist at {uri}: run `bigbertha ingest` first"
        )
    properties = None if exists else {MODEL_PROPERTY: model_id(settings.embeddings.model)}
    if properties is not None:
        properties[DIM_PROPERTY] = str(dim)

    def build(properties: dict[str, str] | None, sparse: bool) -> MilvusVectorStore:
        return _store_class()(
            **_connect_args(settings),
            collection_name=name,
            dim=dim,
            embedding_field=EMBEDDING_FIELD,
            text_key=TEXT_FIELD,
            similarity_metric="COSINE",
            # Chunk ids are content hashes, so an upsert of the same chunk is a no-op.
            upsert_mode=True,
            collection_properties=properties,
            index_config={"index_type": "AUTOINDEX"} if is_server(uri) else {},
            consistency_level="Strong",
            use_async_client=False,
            enable_sparse=sparse,
            sparse_embedding_field=SPARSE_FIELD,
            # BM25 runs inside Milvus on insert and search: no sparse model in our process.
            sparse_embedding_function=(
                BM25BuiltInFunction(TEXT_FIELD, SPARSE_FIELD) if sparse else None
            ),
            # Milvus' BM25 index: a sparse inverted index with the BM25 metric (the store's
            # default for a built-in function, _add_sparse_index_params, named here).
            sparse_index_config={"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25"},
        )

    # Another writer may create the collection between our look and our create (ingest
    # workflows that start together on an empty Milvus): the loser's create meets the winner's
    # collection or index. It then opens the winner's, checked as any existing one, once the
    # winner has finished creating it (a few tries, a moment apart).
    for attempt in range(CREATE_RACE_TRIES):
        try:
            store = call(settings, f"open {name}", partial(build, properties, sparse))
            break
        except Exception as exc:
            if exists or not _created_meanwhile(exc) or attempt == CREATE_RACE_TRIES - 1:
                raise
            log.info("collection %r was created by another writer meanwhile: opening it", name)
            time.sleep(0.2 * (attempt + 1))
            client = call(settings, "connect", lambda: MilvusClient(**_connect_args(settings)))
            try:
                info = check_collection(client, settings, dim, name)
            finally:
                if is_server(uri):
                    client.close()
            if info is not None:
                properties, sparse = None, full_text(info)
    # A reopened milvus-lite file starts released, and so does a collection just created with
    # the sparse index; search needs it loaded.
    call(settings, f"load {name}", lambda: store.client.load_collection(name))
    return store


# --- what the collection holds per source -------------------------------------------------

_LIMIT = 16_384  # Milvus' cap on one query's offset + limit


class Index:
    """The chunk collection: what a source has, and writes that retry."""

    def __init__(self, store: MilvusVectorStore, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.collection = settings.milvus.collection

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return call(self.settings, what, fn)

    def _rows(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        client = self.store.client

        def fetch() -> list[dict[str, Any]]:
            rows = client.query(self.collection, filter=expr, output_fields=fields, limit=_LIMIT)
            if len(rows) < _LIMIT:
                return list(rows)
            # Only a huge source gets here: page through it with an iterator.
            it = client.query_iterator(
                self.collection, batch_size=1000, filter=expr, output_fields=fields
            )
            rows = []
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
            return list(rows)

        return list(self._call("query", fetch))

    def existing(self, source: str) -> dict[str, str | None]:
        """Chunk id → etag for every chunk of `source`."""
        expr = f"{SOURCE_FIELD} == {quote(source)}"
        return {row["id"]: row.get("etag") for row in self._rows(expr, ["id", "etag"])}

    def under(self, prefix: str) -> dict[str, list[str]]:
        """Source → chunk ids for every source whose URI starts with `prefix`."""
        # LIKE's wildcards are cut off and the exact prefix is checked here instead.
        literal = prefix.split("%")[0].split("_")[0]
        expr = f"{SOURCE_FIELD} like {quote(literal + '%')}"
        found: dict[str, list[str]] = {}
        for row in self._rows(expr, ["id", SOURCE_FIELD]):
            source = row[SOURCE_FIELD]
            if source.startswith(prefix):
                found.setdefault(source, []).append(row["id"])
        return found

    def vectors(self, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        expr = f"id in [{', '.join(quote(i) for i in ids)}]"
        rows = self._rows(expr, ["id", EMBEDDING_FIELD])
        return {row["id"]: list(row[EMBEDDING_FIELD]) for row in rows}

    def write(self, nodes: list[TextNode]) -> None:
        if nodes:
            self._call("upsert", lambda: self.store.add(nodes))  # type: ignore[arg-type]

    def delete(self, ids: list[str]) -> None:
        client, collection = self.store.client, self.collection
        for start in range(0, len(ids), 1000):
            batch: list[str] = ids[start : start + 1000]
            self._call("delete", partial(client.delete, collection, ids=batch))


# --- re-indexing a collection from before hybrid retrieval ---------------------------------

REINDEX_SUFFIX = "_reindex"


def reindex(settings: Settings, *, batch: int = 1000) -> int:
    """Rebuild `milvus.collection` with the BM25 full-text index; returns the rows copied.

    The rows are copied as stored (ids, texts, vectors, metadata) into `<collection>_reindex`,
    which Milvus gives its BM25 field on insert; once the copy holds every row the old collection
    is dropped and the copy renamed. Nothing is re-embedded or re-read from object storage, and
    a crash at any point leaves every row in one of the two: run it again to finish. Run it while
    no ingestion writes to the collection (a write to the old one after its copy would be lost).
    """
    from pymilvus import MilvusClient

    from bigbertha.documents.embeddings import dimension, embed_model

    name = settings.milvus.collection
    tmp = name + REINDEX_SUFFIX
    dim = dimension(embed_model(settings))
    client = call(settings, "connect", lambda: MilvusClient(**_connect_args(settings), timeout=30))
    info = check_collection(client, settings, dim)
    copy_exists = bool(call(settings, "list collections", lambda: client.has_collection(tmp)))
    if info is None and copy_exists:  # stopped after the drop: the copy is complete
        log.info("finishing an earlier reindex: renaming %s to %s", tmp, name)
        call(settings, "rename", lambda: client.rename_collection(tmp, name))
        call(settings, f"load {name}", lambda: client.load_collection(name))
        return 0
    if info is None:
        raise CollectionMissing(
            f"collection {name!r} does not exist at {settings.milvus.uri}: nothing to reindex"
        )
    if full_text(info):
        log.info("collection %r already has the BM25 full-text index", name)
        return 0
    if copy_exists:  # a partial copy from an interrupted run; the original is intact
        call(settings, f"drop {tmp}", lambda: client.drop_collection(tmp))
    copy = open_store(settings, create=True, name=tmp)
    call(settings, f"load {name}", lambda: client.load_collection(name))
    it = client.query_iterator(name, batch_size=batch, filter="", output_fields=["*"])
    copied = 0
    try:
        while rows := it.next():
            rows = [{k: v for k, v in row.items() if k != SPARSE_FIELD} for row in rows]
            call(settings, "insert", partial(copy.client.insert, tmp, rows))
            copied += len(rows)
    finally:
        it.close()

    def count(collection: str) -> int:
        rows = client.query(collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    have, want = count(tmp), count(name)
    if have != want:
        raise ServiceUnavailable(
            f"reindex of {name!r}: the copy holds {have} rows, the collection {want} (was it "
            f"written to meanwhile?); the collection is unchanged: run `bigbertha reindex` again"
        )
    call(settings, f"drop {name}", lambda: client.drop_collection(name))
    call(settings, "rename", lambda: client.rename_collection(tmp, name))
    call(settings, f"load {name}", lambda: client.load_collection(name))
    log.info("reindexed %r: %d rows now have the BM25 full-text index", name, copied)
    return copied
