"""Document ingestion: objects or local files → sections → chunks → embeddings → Milvus.

    bigbertha ingest --event-name s3:ObjectCreated:Put "s3://datasets/docs/handbook café.pdf"
    bigbertha ingest --event-name s3:ObjectRemoved:Delete "s3://datasets/docs/handbook café.pdf"
    bigbertha ingest s3://datasets/docs/ ./more-docs --report report.json

Idempotent by construction: a chunk's id is a hash of its source URI, position and text, and
every chunk of a source carries the source URI as its ref-doc id. Re-ingesting an unchanged
object writes nothing; a changed one gets its new chunks written first and its stale ones
deleted after, so a crash never leaves a source with no chunks; a delete removes them all.

Two writers on one object (a backfill batch and the event-driven Workflow of a new upload, or two
overlapping batches) converge to the object's latest version: after writing an object's chunks a
writer stats the object again, and if its ETag is no longer the one it read (a newer version was
uploaded meanwhile) it ingests the object again, which deletes every chunk of the version it
wrote; an object deleted meanwhile has its chunks removed. S3 is strongly consistent, so the
writer of an older version always sees the newer one at that check, and the writer of the newer
version either wrote after the older one (its diff deletes the older chunks) or re-checks.

Bad input is rejected one object at a time (one log line naming it and the reason, an entry in
the JSON report, a copy under the dead-letter prefix) while the rest of the batch goes on.
Exit codes (`bigbertha.core.errors`): 0 all ok, 3 some rejected, 69 storage or Milvus down
after retries (the workflow retries it), 2 bad arguments or a mismatched collection, 143 or 130
stopped by SIGTERM or SIGINT (the report and a log line say how far it got; a rerun finishes).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core import interrupts
from bigbertha.core.errors import BigberthaError, ConfigError, Interrupted
from bigbertha.core.storage import ObjectMissing, Storage, open_client
from bigbertha.documents import readers, vectorstore
from bigbertha.documents.chunking import Chunker
from bigbertha.documents.readers import Rejected
from bigbertha.documents.report import Outcome, Progress, Report
from bigbertha.documents.sources import (
    Item,
    KeyEncoding,
    SourceRef,
    action_for,
    check_size,
    local_items,
    parse_source,
    s3_items,
)
from bigbertha.documents.vectorstore import Index

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)
CONVERGE_TRIES = 5  # reads of an object that keeps changing while it is ingested


@dataclass
class Pending:
    """A source read and chunked, waiting for its new chunks' embeddings."""

    outcome: Outcome
    embed: list[TextNode]  # new chunks
    refresh: list[TextNode]  # same text, new etag/version: reuse the stored vectors
    stale: list[str]
    item: Item
    etag: str


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
                s3_items(ref, self.storage, max_bytes)
                if ref.scheme == "s3"
                else local_items(ref, max_bytes)
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
            check_size(len(data), ing.max_bytes)
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
        return Pending(outcome, new, refresh, stale, item, etag)

    def current(self, p: Pending, index: Index) -> bool:
        """After writing `p`: is it still the object's latest version? False: ingest it again.
        An object deleted meanwhile has its chunks removed (its delete event's job may have run
        before this write) and counts as settled."""
        item = p.item
        if item.bucket is None or item.key is None:
            return True  # a local file: one writer
        try:
            etag = self.storage.stat(item.bucket, item.key).etag
        except ObjectMissing:
            ids = list(index.existing(item.uri))
            index.delete(ids)
            p.outcome.status, p.outcome.removed = "skipped", len(ids)
            p.outcome.reason = "deleted while it was ingested: its chunks are removed"
            log.info("%s: %s", item.uri, p.outcome.reason, extra={"source": item.uri})
            return True
        if etag == p.etag:
            return True
        log.info(
            "%s changed while it was ingested (etag %s, now %s): ingesting the new version",
            item.uri,
            p.etag,
            etag,
            extra={"source": item.uri},
        )
        return False

    def flush(
        self,
        pending: list[Pending],
        index: Index,
        embed: Any,
        chunker: Chunker,
        tries: int = CONVERGE_TRIES,
    ) -> list[Outcome]:
        """Embed every new chunk of the window in one call, then write source by source; a
        source that changed meanwhile is read and written again (at most `tries` times)."""
        new = [n for p in pending for n in p.embed]
        for node, vector in zip(new, embed.encode_documents([n.text for n in new]), strict=True):
            node.embedding = vector
        outcomes: list[Outcome] = []
        again: list[Pending] = []
        for p in pending:
            stored = index.vectors([n.node_id for n in p.refresh])
            for node in p.refresh:
                node.embedding = stored[node.node_id]
            index.write(p.embed + p.refresh)  # new chunks first ...
            index.delete(p.stale)  # ... then the old ones, so the source is never empty
            if self.current(p, index):
                outcomes.append(p.outcome)
                continue
            if tries <= 1:  # rewritten again and again: each upload's own event re-reads it
                p.outcome.reason = (
                    "changed again while ingested; its newest upload's event reads it"
                )
                outcomes.append(p.outcome)
                continue
            redone = self.prepare(p.item, chunker, index)
            if isinstance(redone, Outcome):
                outcomes.append(redone)
            else:
                again.append(redone)
        if again:
            outcomes += self.flush(again, index, embed, chunker, tries - 1)
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
                interrupts.check()
                prepared = self.prepare(item, chunker, index)
                if isinstance(prepared, Outcome):
                    finish([prepared])
                    continue
                window.append(prepared)
                if sum(len(p.embed) for p in window) >= self.settings.ingest.window_chunks:
                    finish(self.flush(window, index, embed, chunker))
                    window = []
            finish(self.flush(window, index, embed, chunker))
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
        with interrupts.interruptible():  # SIGTERM/SIGINT: reported below, then exit 143/130
            job.delete(refs) if action == "delete" else job.ingest(refs)
    except BigberthaError as exc:
        report.fatal, report.fatal_code = str(exc), exc.exit_code
        if isinstance(exc, Interrupted):
            log.warning(
                "%s stopped by %s after %d sources; run it again to finish (ingestion is "
                "idempotent: nothing is written twice)",
                action,
                signal.Signals(exc.signum).name,
                len(report.outcomes),
            )
        raise
    finally:
        report.finished = time.time()
        if report_path is not None:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
            report_path.write_text(text + "\n", encoding="utf-8")
        log.info(report.summary(), extra={"totals": report.to_dict()["totals"]})
    return report
