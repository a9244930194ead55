"""Object storage (MinIO in the cluster, any S3 API in tests) through the `minio` client.

Every part that touches buckets goes through `open_client(settings)`: reads, writes, listings and
copies are retried with exponential backoff on transient failures (connection refused, timeouts,
5xx) up to ``ingest.retries`` times, each try bounded by ``s3.*_timeout_seconds``, and give up
with `ServiceUnavailable` (exit code 69). A missing object is not transient: it raises
`ObjectMissing` at once.

Training artifacts (datasets, adapters, reports) move between workflow steps as ``s3://`` URIs
or local paths; `download_prefix` / `upload_path` / `read_bytes` / `write_bytes` handle both.
"""

from __future__ import annotations

import io
import itertools
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bigbertha.core.errors import ConfigError, InputError, ServiceUnavailable

if TYPE_CHECKING:
    from minio import Minio

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion"}


class ObjectMissing(InputError):
    """The object or bucket does not exist (e.g. deleted between the event and the read)."""


def retry(
    call: Callable[[], T],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    attempts: int,
    backoff: float,
) -> T:
    """Run `call`; on a transient error wait backoff * 2**n (with jitter, at most 30 s) and retry.

    After `attempts` tries raise ServiceUnavailable naming `what` and the last error.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == attempts:
                raise ServiceUnavailable(
                    f"{what}: still failing after {attempts} attempts ({_short(exc)})"
                ) from exc
            delay = min(30.0, backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            log.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                what,
                _short(exc),
                attempt,
                attempts - 1,
                delay,
                extra={"attempt": attempt},
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def s3_transient(exc: BaseException) -> bool:
    """Network failures and server-side S3 errors are worth retrying; client errors are not."""
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, ServerError | Urllib3Error | ConnectionError | TimeoutError)


@dataclass(frozen=True)
class ObjectInfo:
    """What we need to know about an object before reading it."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None = None
    content_type: str | None = None

    @property
    def uri(self) -> str:
        """s3://bucket/key with the key exactly as stored (spaces and UTF-8 kept raw)."""
        return f"s3://{self.bucket}/{self.key}"


class Storage:
    """A MinIO client whose calls retry transient failures."""

    def __init__(self, client: Minio, *, attempts: int = 5, backoff: float = 0.5) -> None:
        self.client = client
        self.attempts = attempts
        self.backoff = backoff

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        from minio.error import S3Error

        try:
            return retry(
                call,
                what=f"object storage {what}",
                transient=s3_transient,
                attempts=self.attempts,
                backoff=self.backoff,
            )
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ObjectMissing(f"{what}: {exc.code} ({exc.message})") from exc
            # Access denied, bad request, ...: the configuration, not the weather.
            raise ConfigError(f"object storage {what}: {exc.code} ({exc.message})") from exc

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and version of an object; ObjectMissing if it is gone."""
        st = self._retry(f"stat s3://{bucket}/{key}", lambda: self.client.stat_object(bucket, key))
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(st.size or 0),
            etag=(st.etag or "").strip('"'),
            version_id=st.version_id,
            content_type=st.content_type,
        )

    def get(self, bucket: str, key: str, *, version_id: str | None = None) -> bytes:
        """The whole object (callers check the size cap with `stat` first)."""

        def read() -> bytes:
            response = self.client.get_object(bucket, key, version_id=version_id)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retry(f"read s3://{bucket}/{key}", read)

    def download(self, bucket: str, key: str, path: Path) -> None:
        """Stream an object into the file `path` (model weights do not fit in memory)."""
        self._retry(
            f"download s3://{bucket}/{key}",
            lambda: self.client.fget_object(bucket, key, str(path)),
        )

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write `data` under `key`."""
        self._retry(
            f"write s3://{bucket}/{key}",
            lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def list(
        self,
        bucket: str,
        prefix: str = "",
        *,
        start_after: str | None = None,
        until: str | None = None,
    ) -> Iterator[ObjectInfo]:
        """Every object under `prefix` (recursively), in key order; with `start_after` and
        `until`, only keys in (start_after, until], listing no further than `until`'s page."""
        objects = self._retry(
            f"list s3://{bucket}/{prefix}",
            lambda: list(
                itertools.takewhile(
                    lambda o: until is None or (o.object_name or "") <= until,
                    self.client.list_objects(
                        bucket, prefix=prefix, recursive=True, start_after=start_after
                    ),
                )
            ),
        )
        for obj in objects:
            if obj.is_dir or obj.object_name is None:
                continue
            yield ObjectInfo(
                bucket=bucket,
                key=obj.object_name,
                size=int(obj.size or 0),
                etag=(obj.etag or "").strip('"'),
                version_id=obj.version_id,
            )

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> None:
        """Server-side copy (no bytes pass through this process)."""
        from minio.commonconfig import CopySource

        self._retry(
            f"copy s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key}",
            lambda: self.client.copy_object(dst_bucket, dst_key, CopySource(src_bucket, src_key)),
        )

    def remove(self, bucket: str, key: str) -> None:
        """Delete an object (no error if it is already gone)."""
        self._retry(f"delete s3://{bucket}/{key}", lambda: self.client.remove_object(bucket, key))

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` unless it exists."""

        def make() -> None:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)

        self._retry(f"create bucket {bucket}", make)


def open_client(settings: Settings) -> Storage:
    """A retrying MinIO client for `settings.s3`; ConfigError when no endpoint is set."""
    import urllib3
    from minio import Minio

    s3 = settings.s3
    if not s3.endpoint:
        raise ConfigError(
            "s3.endpoint is not set: set BIGBERTHA_S3__ENDPOINT (host:port) to read s3:// sources"
        )
    # urllib3 itself does not retry: our loop does, with backoff we control and log.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=s3.connect_timeout_seconds, read=s3.read_timeout_seconds),
        retries=False,
        maxsize=8,
    )
    client = Minio(
        s3.endpoint,
        access_key=s3.access_key.get_secret_value() if s3.access_key else None,
        secret_key=s3.secret_key.get_secret_value() if s3.secret_key else None,
        secure=s3.secure,
        region=s3.region,
        http_client=http,
    )
    return Storage(
        client, attempts=settings.ingest.retries, backoff=settings.ingest.retry_backoff_seconds
    )


# ---------------------------------------------------------------------------------------------
# Artifacts as s3:// URIs or local paths (datasets, adapters, reports between workflow steps)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); a clear error for anything else."""
    rest = uri[len("s3://") :] if is_s3(uri) else ""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def read_bytes(settings: Settings, uri: str) -> bytes:
    """The content of a local file or an s3:// object (retried by `storage`)."""
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{uri}: cannot read ({exc.strerror or exc})") from exc

    bucket, key = split_s3(uri)
    return open_client(settings).get(bucket, key)


def write_bytes(settings: Settings, uri: str, data: bytes) -> None:
    """Write a local file or an s3:// object (creating the bucket if needed)."""
    if not is_s3(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)
        return

    bucket, key = split_s3(uri)
    store = open_client(settings)
    store.ensure_bucket(bucket)
    store.put(bucket, key, data)


def upload_path(settings: Settings, src: Path, uri: str) -> str:
    """Copy a file or a directory tree to `uri` (s3:// prefix or local path); returns `uri`."""
    if not is_s3(uri):
        dest = Path(uri)
        if src.resolve() != dest.resolve():
            if src.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
            else:
                shutil.copytree(src, dest, dirs_exist_ok=True)
        return uri

    bucket, prefix = split_s3(uri)
    store = open_client(settings)
    store.ensure_bucket(bucket)
    if src.is_file():
        store.put(bucket, prefix, src.read_bytes())
        return uri
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        store.put(
            bucket, f"{prefix.rstrip('/')}/{path.relative_to(src)}".lstrip("/"), path.read_bytes()
        )
    return uri


def download_prefix(settings: Settings, uri: str, dest: Path) -> Path:
    """Download every object under an s3:// prefix into `dest` (replaced); returns `dest`."""

    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    store = open_client(settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".s3-", dir=dest.parent))
    count = 0
    for obj in store.list(bucket, prefix):
        target = tmp / obj.key[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(bucket, obj.key, target)
        count += 1
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{uri}: no objects under this prefix")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
