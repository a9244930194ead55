"""Backfill: ingest everything under an object prefix, in batches that run side by side.

    bigbertha ingest --prefix s3://datasets/docs/                       # all of it, here
    bigbertha ingest --prefix s3://datasets/docs/ --plan-out batches.json   # 1. list, split
    bigbertha ingest --batch '{"batch": 0, "prefix": ..., "first": ..., "last": ...}'  # 2. one
    bigbertha ingest --merge '[<batch summaries>]'                      # 3. one report

The `ingest-backfill` WorkflowTemplate runs steps 1-3 as list → `withParam` fan-out under a
`parallelism` cap → fan-in. A batch is a key range of the listing (first and last key), not the
keys themselves, so the fan-out parameter stays small for any bucket; a batch lists its own
range again (S3 StartAfter) and ingests it with the same code and the same rules as the
event-driven path (`bigbertha.documents.ingest`): chunk ids from source and content, new chunks
written before stale ones are deleted, and a re-check of the object after writing, so two
writers on one object converge to its latest version. A batch stopped half-way and run again
writes nothing twice: what it already wrote is `unchanged`.

Exit codes: a batch exits 0 with rejected documents (they are named in its summary and in the
merged report; a retry would not change them) and 69 when storage or Milvus stay down (the
Workflow retries it); the merge exits 3 when any document was rejected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import ConfigError, ExitCode
from bigbertha.core.storage import open_client
from bigbertha.documents.sources import parse_source

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings
    from bigbertha.documents.report import Report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Keys first..last (inclusive, in listing order) under `prefix`, an s3:// prefix URI."""

    batch: int
    prefix: str
    first: str
    last: str
    count: int

    @classmethod
    def parse(cls, text: str | dict[str, Any]) -> Batch:
        try:
            data = json.loads(text) if isinstance(text, str) else text
            return cls(
                int(data["batch"]),
                str(data["prefix"]),
                str(data["first"]),
                str(data["last"]),
                int(data.get("count", 0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--batch: not a batch of `--plan-out` ({exc}): {text!r}") from exc


def _prefix(uri: str) -> tuple[str, str]:
    ref = parse_source(uri)
    if ref.scheme != "s3" or not ref.is_prefix:
        raise ConfigError(f"--prefix {uri!r}: expected s3://bucket/ or s3://bucket/path/")
    return ref.location, ref.key


def plan(settings: Settings, prefix: str, batch_size: int) -> list[Batch]:
    """List `prefix` and split its keys into batches of `batch_size` (dead-letter copies left
    out: they are never ingested)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    bucket, key_prefix = _prefix(prefix)
    ing = settings.ingest
    dead = ing.dead_letter_prefix if ing.dead_letter_bucket in (None, bucket) else None
    keys = [
        o.key
        for o in open_client(settings).list(bucket, key_prefix)
        if dead is None or not o.key.startswith(dead)
    ]
    uri = f"s3://{bucket}/{key_prefix}"
    return [
        Batch(n, uri, part[0], part[-1], len(part))
        for n, part in enumerate(keys[i : i + batch_size] for i in range(0, len(keys), batch_size))
    ]


def batch_keys(settings: Settings, batch: Batch) -> list[str]:
    """The keys of `batch` as the bucket lists them now (one may have gone or come since)."""
    bucket, key_prefix = _prefix(batch.prefix)
    if not batch.first.startswith(key_prefix) or not batch.last.startswith(key_prefix):
        raise ConfigError(f"--batch {batch.batch}: its keys are not under {batch.prefix}")
    # StartAfter a string just below `first` (`first` less its last character: what sorts
    # between them starts with it and is cut by the >= check), so `first` itself is listed.
    listed = open_client(settings).list(
        bucket, key_prefix, start_after=batch.first[:-1] or None, until=batch.last
    )
    return [o.key for o in listed if o.key >= batch.first]


def summary(batch: Batch | None, report: Report) -> dict[str, Any]:
    """What a batch hands to the fan-in: totals and every rejected document by name (small:
    no per-document results, so a few thousand of them fit in one Argo parameter)."""
    data = report.to_dict()
    return {
        "batch": None if batch is None else batch.batch,
        "exit_code": data["exit_code"],
        "fatal": data["fatal"],
        "totals": data["totals"],
        "failures": [{"source": r["source"], "reason": r["reason"]} for r in data["rejected"]],
    }


def run_batch(
    settings: Settings, batch: Batch, report_path: Path | None = None
) -> tuple[dict[str, Any], Report]:
    """Ingest one batch; its summary and full report (raises ServiceUnavailable as ingest does)."""
    from bigbertha.documents import ingest

    keys = batch_keys(settings, batch)
    bucket, _ = _prefix(batch.prefix)
    log.info("batch %d: %d keys %s .. %s", batch.batch, len(keys), batch.first, batch.last)
    if not keys:
        from bigbertha.documents.report import Report

        report = Report("ingest", None)
        return summary(batch, report), report
    report = ingest.run(settings, [f"s3://{bucket}/{k}" for k in keys], report_path=report_path)
    return summary(batch, report), report


def merge(summaries: list[Any]) -> dict[str, Any]:
    """One report from the batches' summaries (dicts, or JSON strings as Argo aggregates them)."""
    parsed = [json.loads(s) if isinstance(s, str) else s for s in summaries]
    totals: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    fatal: list[dict[str, Any]] = []
    for s in parsed:
        for key, value in (s.get("totals") or {}).items():
            totals[key] = totals.get(key, 0) + int(value)
        failures += s.get("failures") or []
        if s.get("fatal"):
            fatal.append({"batch": s.get("batch"), "fatal": s["fatal"]})
    code = ExitCode.UNAVAILABLE if fatal else ExitCode.INPUT if failures else ExitCode.OK
    return {
        "action": "backfill",
        "batches": len(parsed),
        "exit_code": int(code),
        "totals": totals,
        "failures": sorted(failures, key=lambda f: str(f.get("source"))),
        "failed_batches": fatal,
    }


def backfill(
    settings: Settings,
    prefix: str,
    *,
    batch_size: int,
    parallelism: int,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Plan, run the batches `parallelism` at a time in this process (threads share the loaded
    embedding model), and merge: the Workflow's three steps in one process."""
    from bigbertha.core.errors import BigberthaError

    batches = plan(settings, prefix, batch_size)
    log.info("backfill %s: %d batches of up to %d", prefix, len(batches), batch_size)

    def one(batch: Batch) -> dict[str, Any]:
        try:
            result, _ = run_batch(settings, batch)
        except BigberthaError as exc:
            result = {"batch": batch.batch, "exit_code": int(exc.exit_code), "fatal": str(exc)}
            result |= {"totals": {}, "failures": []}
        if on_batch is not None:
            on_batch(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        results = list(pool.map(one, batches))
    return merge(results)


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")


def as_dict(batch: Batch) -> dict[str, Any]:
    return asdict(batch)
