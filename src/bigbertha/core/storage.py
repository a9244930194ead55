"""Object storage (MinIO in the cluster, any S3 API in tests) through the `minio` client.

Every part that touches buckets goes through `open_client(settings)`: reads, writes, listings and
copies are retried with exponential backoff on transient failures (connection refused, timeouts,
5xx), and give up with `ServiceUnavailable` (exit code 1). A missing object is not transient: it
raises `ObjectMissing` at once.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from bigbertha.core.errors import BigberthaError, ConfigError, ServiceUnavailable

if TYPE_CHECKING:
    from minio import Minio

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion"}


class ObjectMissing(BigberthaError):
    """The object or bucket does not exist (e.g. deleted between the event and the read)."""

    exit_code = 3


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
            raise BigberthaError(f"object storage {what}: {exc.code} ({exc.message})") from exc

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

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix` (recursively), in key order."""
        objects = self._retry(
            f"list s3://{bucket}/{prefix}",
            lambda: list(self.client.list_objects(bucket, prefix=prefix, recursive=True)),
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
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
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
