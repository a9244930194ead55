"""Document ingestion: objects or local files → sections → chunks → embeddings → Milvus.

    bigbertha ingest --event-name s3:ObjectCreated:Put "s3://datasets/docs/handbook café.pdf"
    bigbertha ingest --event-name s3:ObjectRemoved:Delete "s3://datasets/docs/handbook café.pdf"
    bigbertha ingest s3://datasets/docs/ ./more-docs --report report.json

Idempotent by construction: a chunk's id is a hash of its source URI, position and text, and
every chunk of a source carries the source URI as its ref-doc id. Re-ingesting an unchanged
object writes nothing; a changed one gets its new chunks written first and its stale ones
deleted after, so a crash never leaves a source with no chunks; a delete removes them all.

Bad input is rejected one object at a time (one log line naming it and the reason, an entry in
the JSON report, a copy under the dead-letter prefix) while the rest of the batch goes on.
Exit codes: 0 all ok, 3 some rejected, 1 fatal (storage or Milvus down after retries).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TextIO

from bigbertha.core.errors import BigberthaError, ConfigError
from bigbertha.core.storage import ObjectMissing, Storage, open_client
from bigbertha.documents import readers, vectorstore
from bigbertha.documents.readers import Rejected

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

Action = Literal["ingest", "delete"]
KeyEncoding = Literal["raw", "query"]
# Metadata that is bookkeeping, not content: never embedded, not shown to the LLM.
_BOOKKEEPING = ["source", "etag", "version_id", "chunk_index"]
_METADATA = [*_BOOKKEEPING, "page", "section", "file_name"]
_LIMIT = 16_384  # Milvus' cap on one query's offset + limit


# --- sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRef:
    """One SOURCE argument: an object, an object prefix, a local file or a local directory."""

    scheme: Literal["s3", "file"]
    location: str  # bucket for s3, absolute path for file
    key: str = ""  # object key or key prefix (s3 only), always raw

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.location}/{self.key}"
        return f"file://{self.location}"

    @property
    def is_prefix(self) -> bool:
        if self.scheme == "s3":
            return self.key == "" or self.key.endswith("/")
        return Path(self.location).is_dir()


def parse_source(text: str, key_encoding: KeyEncoding = "raw") -> SourceRef:
    """Parse s3://bucket/key (key raw, or query-escaped as MinIO webhook targets send it) or a path.

    Raises ConfigError for a malformed s3 URI.
    """
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"source {text!r}: no bucket (expected s3://bucket/key)")
        if key_encoding == "query":
            key = urllib.parse.unquote_plus(key)
        return SourceRef("s3", bucket, key)
    if "://" in text:
        raise ConfigError(f"source {text!r}: only s3:// URIs and local paths are supported")
    return SourceRef("file", str(Path(text).expanduser().resolve()))


def action_for(event_name: str | None, delete: bool) -> Action:
    """--delete or an s3:ObjectRemoved:* event deletes; s3:ObjectCreated:* (or none) ingests."""
    if delete or (event_name or "").startswith("s3:ObjectRemoved:"):
        return "delete"
    if not event_name or event_name.startswith("s3:ObjectCreated:"):
        return "ingest"
    raise ConfigError(
        f"--event-name {event_name!r}: expected s3:ObjectCreated:* or s3:ObjectRemoved:*"
    )


@dataclass
class Item:
    """One document to ingest, read lazily."""

    uri: str
    name: str
    read: Callable[[], tuple[bytes, str, str | None]]  # -> (data, etag, version_id)
    bucket: str | None = None
    key: str | None = None


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise Rejected(f"too large: {size} bytes > ingest.max_bytes ({max_bytes})")


def _local_items(ref: SourceRef, max_bytes: int) -> Iterator[Item]:
    root = Path(ref.location)
    if root.is_dir():
        paths = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        paths = [root]
    for path in paths:

        def read(path: Path = path) -> tuple[bytes, str, str | None]:
            try:
                _check_size(path.stat().st_size, max_bytes)
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise Rejected("file not found") from exc
            except OSError as exc:
                raise Rejected(f"cannot read file ({exc.strerror})") from exc
            return data, hashlib.sha256(data).hexdigest()[:32], None

        yield Item(f"file://{path}", path.name, read)


def _s3_items(ref: SourceRef, storage: Storage, max_bytes: int) -> Iterator[Item]:
    bucket = ref.location
    # A single key is stat'ed in read(), so an object gone by then is a rejection, not fatal.
    keys = [i.key for i in storage.list(bucket, ref.key)] if ref.is_prefix else [ref.key]
    for key in keys:

        def read(key: str = key) -> tuple[bytes, str, str | None]:
            try:
                stat = storage.stat(bucket, key)
                _check_size(stat.size, max_bytes)  # before the download
                data = storage.get(bucket, key, version_id=stat.version_id)
            except ObjectMissing as exc:
                raise Rejected("object not found (deleted before it could be read?)") from exc
            return data, stat.etag, stat.version_id

        yield Item(
            f"s3://{bucket}/{key}",
            PurePosixPath(key).name,
            read,
            bucket=bucket,
            key=key,
        )


# --- report and progress -------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one source."""

    source: str
    status: Literal["ingested", "unchanged", "deleted", "rejected", "skipped"]
    chunks: int = 0
    added: int = 0
    removed: int = 0
    reason: str | None = None
    dead_letter: str | None = None


@dataclass
class Report:
    """The JSON report: every source's outcome, the rejected ones listed again, and totals."""

    action: Action
    event_name: str | None
    started: float = field(default_factory=time.time)
    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None
    finished: float | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return 1
        return 3 if any(o.status == "rejected" for o in self.outcomes) else 0

    def to_dict(self) -> dict[str, Any]:
        totals: dict[str, int] = {"sources": len(self.outcomes)}
        for status in ("ingested", "unchanged", "deleted", "rejected", "skipped"):
            totals[status] = sum(o.status == status for o in self.outcomes)
        totals["chunks_added"] = sum(o.added for o in self.outcomes)
        totals["chunks_removed"] = sum(o.removed for o in self.outcomes)
        return {
            "action": self.action,
            "event_name": self.event_name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "exit_code": self.exit_code,
            "fatal": self.fatal,
            "totals": totals,
            "rejected": [
                {"source": o.source, "reason": o.reason, "dead_letter": o.dead_letter}
                for o in self.outcomes
                if o.status == "rejected"
            ],
            "results": [asdict(o) for o in self.outcomes],
        }

    def summary(self) -> str:
        t = self.to_dict()["totals"]
        return (
            f"{self.action}: {t['sources']} sources: {t['ingested']} ingested, "
            f"{t['unchanged']} unchanged, {t['deleted']} deleted, {t['rejected']} rejected, "
            f"{t['skipped']} skipped; chunks +{t['chunks_added']} -{t['chunks_removed']}"
        )


class Progress:
    """A progress bar on a terminal, one JSON line per finished source otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done = total, 0
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="doc", file=self.stream, dynamic_ncols=True)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(outcome.status, refresh=False)
            self.bar.update(1)
            return
        line = {"progress": {"done": self.done, "total": self.total, **_brief(outcome)}}
        self.stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _brief(outcome: Outcome) -> dict[str, Any]:
    return {k: v for k, v in asdict(outcome).items() if v not in (None, 0) or k == "status"}


# --- chunks and the index ------------------------------------------------------------------


def chunk_id(source: str, index: int, text: str) -> str:
    """Stable id from source and content: same object, same chunking → same ids."""
    digest = hashlib.sha256(f"{source}\x00{index}\x00{text}".encode())
    return digest.hexdigest()[:32]


class Chunker:
    """LlamaIndex SentenceSplitter counting tokens with the embedding model's own tokenizer."""

    def __init__(self, settings: Settings, tokenizer: Any | None) -> None:
        from llama_index.core.node_parser import SentenceSplitter

        self.splitter = SentenceSplitter(
            chunk_size=settings.ingest.chunk_size,
            chunk_overlap=settings.ingest.chunk_overlap,
            # verbose=False: sections longer than the model's window are what the splitter is
            # for; transformers' "sequence length is longer than..." warning is noise here.
            tokenizer=partial(tokenizer.tokenize, verbose=False) if tokenizer is not None else None,
            include_prev_next_rel=False,  # neighbours' ids would go stale when a source changes
        )

    def chunks(
        self, uri: str, name: str, sections: list[readers.Section], etag: str, version: str | None
    ) -> list[TextNode]:
        from llama_index.core import Document
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

        docs = []
        for number, section in enumerate(sections):
            doc = Document(
                id_=f"{uri}#{number}",  # unique: the splitter maps nodes back to docs by id
                text=section.text,
                metadata={
                    "source": uri,
                    "etag": etag,
                    "version_id": version,
                    "page": section.page,
                    "section": section.section,
                    "file_name": name,
                },
                excluded_embed_metadata_keys=list(_METADATA),
                excluded_llm_metadata_keys=list(_BOOKKEEPING),
            )
            docs.append(doc)
        nodes = self.splitter.get_nodes_from_documents(docs)
        for index, node in enumerate(nodes):
            node.metadata["chunk_index"] = index
            node.id_ = chunk_id(uri, index, node.get_content())
            # The ref doc is the source, so all its chunks are found and deleted together.
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=uri)
        return nodes  # type: ignore[return-value]


class Index:
    """The chunk collection: what a source has, and writes that retry."""

    def __init__(self, store: MilvusVectorStore, settings: Settings) -> None:
        self.store, self.settings = store, settings
        self.collection = settings.milvus.collection

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return vectorstore.call(self.settings, what, fn)

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
        expr = f"{vectorstore.SOURCE_FIELD} == {vectorstore.quote(source)}"
        return {row["id"]: row.get("etag") for row in self._rows(expr, ["id", "etag"])}

    def under(self, prefix: str) -> dict[str, list[str]]:
        """Source → chunk ids for every source whose URI starts with `prefix`."""
        # LIKE's wildcards are cut off and the exact prefix is checked here instead.
        literal = prefix.split("%")[0].split("_")[0]
        expr = f"{vectorstore.SOURCE_FIELD} like {vectorstore.quote(literal + '%')}"
        found: dict[str, list[str]] = {}
        for row in self._rows(expr, ["id", vectorstore.SOURCE_FIELD]):
            source = row[vectorstore.SOURCE_FIELD]
            if source.startswith(prefix):
                found.setdefault(source, []).append(row["id"])
        return found

    def vectors(self, ids: list[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        expr = f"id in [{', '.join(vectorstore.quote(i) for i in ids)}]"
        rows = self._rows(expr, ["id", vectorstore.EMBEDDING_FIELD])
        return {row["id"]: list(row[vectorstore.EMBEDDING_FIELD]) for row in rows}

    def write(self, nodes: list[TextNode]) -> None:
        if nodes:
            self._call("upsert", lambda: self.store.add(nodes))  # type: ignore[arg-type]

    def delete(self, ids: list[str]) -> None:
        client, collection = self.store.client, self.collection
        for start in range(0, len(ids), 1000):
            batch: list[str] = ids[start : start + 1000]
            self._call("delete", partial(client.delete, collection, ids=batch))


@dataclass
class Pending:
    """A source read and chunked, waiting for its new chunks' embeddings."""

    outcome: Outcome
    embed: list[TextNode]  # new chunks
    refresh: list[TextNode]  # same text, new etag/version: reuse the stored vectors
    stale: list[str]


# --- the job -------------------------------------------------------------------------------


class Ingestion:
    """One `bigbertha ingest` run over many sources."""

    def __init__(self, settings: Settings, report: Report) -> None:
        self.settings = settings
        self.report = report
        self._storage: Storage | None = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_client(self.settings)
        return self._storage

    def items(self, refs: list[SourceRef]) -> list[Item]:
        found: list[Item] = []
        for ref in refs:
            max_bytes = self.settings.ingest.max_bytes
            found += (
                _s3_items(ref, self.storage, max_bytes)
                if ref.scheme == "s3"
                else _local_items(ref, max_bytes)
            )
        return found

    def dead_lettered(self, item: Item) -> bool:
        ing = self.settings.ingest
        return (
            item.key is not None
            and item.key.startswith(ing.dead_letter_prefix)
            and ing.dead_letter_bucket in (None, item.bucket)
        )

    def dead_letter(self, item: Item, reason: str) -> str | None:
        """Copy a rejected object under the dead-letter prefix, with its reason beside it."""
        if item.bucket is None or item.key is None or reason.startswith("object not found"):
            return None
        bucket = self.settings.ingest.dead_letter_bucket or item.bucket
        key = self.settings.ingest.dead_letter_prefix + item.key
        try:
            self.storage.copy(item.bucket, item.key, bucket, key)
        except ObjectMissing:  # deleted since it was read: nothing left to keep
            return None
        note = {"source": item.uri, "reason": reason, "event_name": self.report.event_name}
        self.storage.put(
            bucket,
            key + ".reason.json",
            json.dumps(note, ensure_ascii=False).encode(),
            content_type="application/json",
        )
        return f"s3://{bucket}/{key}"

    def reject(self, item: Item, reason: str) -> Outcome:
        dead = self.dead_letter(item, reason)
        log.warning("rejected %s: %s", item.uri, reason, extra={"source": item.uri})
        return Outcome(item.uri, "rejected", reason=reason, dead_letter=dead)

    def prepare(self, item: Item, chunker: Chunker, index: Index) -> Outcome | Pending:
        """Read, check and chunk one item, and diff it against what the index holds."""
        ing = self.settings.ingest
        if self.dead_lettered(item):
            return Outcome(item.uri, "skipped", reason="under the dead-letter prefix")
        try:
            readers.check_type(item.name)  # before any download
            data, etag, version = item.read()
            _check_size(len(data), ing.max_bytes)
            sections = readers.read(item.name, data)
            nodes = chunker.chunks(item.uri, item.name, sections, etag, version)
        except Rejected as exc:
            return self.reject(item, str(exc))
        have = index.existing(item.uri)
        outcome = Outcome(item.uri, "ingested", chunks=len(nodes))
        if set(have) == {n.node_id for n in nodes} and all(e == etag for e in have.values()):
            outcome.status = "unchanged"
            return outcome
        new = [n for n in nodes if n.node_id not in have]
        refresh = [n for n in nodes if n.node_id in have and have[n.node_id] != etag]
        keep = {n.node_id for n in nodes}
        stale = [i for i in have if i not in keep]
        outcome.added, outcome.removed = len(new), len(stale)
        return Pending(outcome, new, refresh, stale)

    def flush(self, pending: list[Pending], index: Index, embed: Any) -> list[Outcome]:
        """Embed every new chunk of the window in one call, then write source by source."""
        new = [n for p in pending for n in p.embed]
        for node, vector in zip(new, embed.encode_documents([n.text for n in new]), strict=True):
            node.embedding = vector
        outcomes = []
        for p in pending:
            stored = index.vectors([n.node_id for n in p.refresh])
            for node in p.refresh:
                node.embedding = stored[node.node_id]
            index.write(p.embed + p.refresh)  # new chunks first ...
            index.delete(p.stale)  # ... then the old ones, so the source is never empty
            outcomes.append(p.outcome)
        return outcomes

    def ingest(self, refs: list[SourceRef]) -> None:
        from bigbertha.documents.embeddings import embed_model

        items = self.items(refs)  # storage first: if it is down, fail before loading a model
        embed = embed_model(self.settings)
        # Opening the store checks the collection's model and dim before anything is written.
        index = Index(vectorstore.open_store(self.settings, create=True), self.settings)
        max_tokens = getattr(embed, "max_seq_length", None)
        if max_tokens and self.settings.ingest.chunk_size > max_tokens:
            log.warning(
                "ingest.chunk_size %d exceeds the embedding model's %d tokens: chunk tails "
                "will not be embedded",
                self.settings.ingest.chunk_size,
                max_tokens,
            )
        chunker = Chunker(self.settings, getattr(embed, "tokenizer", None))
        progress = Progress(len(items))
        window: list[Pending] = []

        def finish(outcomes: list[Outcome]) -> None:
            for outcome in outcomes:
                self.report.outcomes.append(outcome)
                progress.update(outcome)

        try:
            for item in items:
                prepared = self.prepare(item, chunker, index)
                if isinstance(prepared, Outcome):
                    finish([prepared])
                    continue
                window.append(prepared)
                if sum(len(p.embed) for p in window) >= self.settings.ingest.window_chunks:
                    finish(self.flush(window, index, embed))
                    window = []
            finish(self.flush(window, index, embed))
        finally:
            progress.close()

    def recreated(self, ref: SourceRef) -> bool:
        """A delete event for an object that exists again (re-uploaded before this job ran, its
        create event handled first): keep the new version's chunks."""
        if ref.scheme != "s3" or ref.is_prefix:
            return False
        try:
            self.storage.stat(ref.location, ref.key)
        except ObjectMissing:
            return False
        reason = "the object exists again (re-uploaded after the delete); its chunks are kept"
        log.info("skipped %s: %s", ref.uri, reason, extra={"source": ref.uri})
        self.report.outcomes.append(Outcome(ref.uri, "skipped", reason=reason))
        return True

    def delete(self, refs: list[SourceRef]) -> None:
        try:
            index = Index(vectorstore.open_store(self.settings, create=False), self.settings)
        except vectorstore.CollectionMissing:
            log.info("nothing to delete: the collection does not exist")
            self.report.outcomes += [Outcome(ref.uri, "deleted") for ref in refs]
            return
        for ref in refs:
            if self.report.event_name and self.recreated(ref):
                continue
            if ref.is_prefix:
                prefix = ref.uri if ref.scheme == "s3" else ref.uri.rstrip("/") + "/"
                found = index.under(prefix)
            else:
                found = {ref.uri: list(index.existing(ref.uri))}
            for source, ids in sorted(found.items()) or [(ref.uri, [])]:
                index.delete(ids)
                self.report.outcomes.append(Outcome(source, "deleted", removed=len(ids)))


def run(
    settings: Settings,
    sources: list[str],
    *,
    event_name: str | None = None,
    key_encoding: KeyEncoding = "raw",
    delete: bool = False,
    report_path: Path | None = None,
) -> Report:
    """Ingest (or delete) `sources`; returns the report (also written to `report_path`).

    Raises ConfigError for bad arguments and ServiceUnavailable when storage or Milvus stay
    unreachable; the report is written either way.
    """
    action = action_for(event_name, delete)
    refs = [parse_source(s, key_encoding) for s in sources]
    if not refs:
        raise ConfigError("no SOURCE given: pass s3://bucket/key, s3://bucket/prefix/ or a path")
    report = Report(action, event_name)
    job = Ingestion(settings, report)
    try:
        job.delete(refs) if action == "delete" else job.ingest(refs)
    except BigberthaError as exc:
        report.fatal = str(exc)
        raise
    finally:
        report.finished = time.time()
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
            report_path.write_text(text + "\n", encoding="utf-8")
        log.info(report.summary(), extra={"totals": report.to_dict()["totals"]})
    return report
