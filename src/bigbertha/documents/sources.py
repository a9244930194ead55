"""What `bigbertha ingest` reads: SOURCE arguments (objects, prefixes, files, directories)
parsed and listed as items that are read lazily, each bounded by ``ingest.max_bytes``."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from bigbertha.core.errors import ConfigError
from bigbertha.core.storage import ObjectMissing, Storage
from bigbertha.documents.readers import Rejected

Action = Literal["ingest", "delete"]
KeyEncoding = Literal["raw", "query"]


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


def check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise Rejected(f"too large: {size} bytes > ingest.max_bytes ({max_bytes})")


def local_items(ref: SourceRef, max_bytes: int) -> Iterator[Item]:
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
                check_size(path.stat().st_size, max_bytes)
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise Rejected("file not found") from exc
            except OSError as exc:
                raise Rejected(f"cannot read file ({exc.strerror})") from exc
            return data, hashlib.sha256(data).hexdigest()[:32], None

        yield Item(f"file://{path}", path.name, read)


def s3_items(ref: SourceRef, storage: Storage, max_bytes: int) -> Iterator[Item]:
    bucket = ref.location
    # A single key is stat'ed in read(), so an object gone by then is a rejection, not fatal.
    keys = [i.key for i in storage.list(bucket, ref.key)] if ref.is_prefix else [ref.key]
    for key in keys:

        def read(key: str = key) -> tuple[bytes, str, str | None]:
            try:
                stat = storage.stat(bucket, key)
                check_size(stat.size, max_bytes)  # before the download
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
