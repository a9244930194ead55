"""Object storage against a real S3 server (moto): the client's round trips, missing objects and
retries, and the s3://-or-path artifact I/O the jobs read and write through."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import settings as settings_mod
from bigbertha.core import storage as storage_mod
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.core.storage import ObjectMissing, Storage, open_client, retry
from tests.services import Service, free_port


def s3_settings(s3: Service | None, **ingest: Any) -> settings_mod.Settings:
    endpoint = s3.extra["endpoint"] if s3 else f"127.0.0.1:{free_port()}"
    return settings_mod.load(
        overrides={
            "s3": {"endpoint": endpoint, "access_key": "testing", "secret_key": "testing-secret"},
            "ingest": {"retries": 3, "retry_backoff_seconds": 0.01, **ingest},
        }
    )


@pytest.fixture(scope="module")
def storage(s3_server: Service) -> Storage:
    client = open_client(s3_settings(s3_server))
    client.ensure_bucket("storage-test")
    return client


def test_put_stat_get_list_copy_remove_round_trip(storage: Storage) -> None:
    key = "docs/handbook 2026 café.md"  # a space and a non-ASCII character, raw
    storage.put("storage-test", key, b"# hello\n", content_type="text/markdown")
    info = storage.stat("storage-test", key)
    assert (info.size, info.key, info.uri) == (8, key, f"s3://storage-test/{key}")
    assert info.etag and '"' not in info.etag
    assert storage.get("storage-test", key) == b"# hello\n"
    storage.put("storage-test", "docs/sub/b.txt", b"b")
    storage.put("storage-test", "other/c.txt", b"c")
    assert [o.key for o in storage.list("storage-test", "docs/")] == [key, "docs/sub/b.txt"]
    storage.copy("storage-test", key, "storage-test", "dead-letter/" + key)
    assert storage.get("storage-test", "dead-letter/" + key) == b"# hello\n"
    storage.remove("storage-test", key)
    with pytest.raises(ObjectMissing):
        storage.stat("storage-test", key)


def test_missing_object_raises_at_once_without_retrying(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(ObjectMissing) as err:
        storage.get("storage-test", "never/uploaded.pdf")
    assert "never/uploaded.pdf" in str(err.value)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_unreachable_storage_retries_with_backoff_then_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = open_client(s3_settings(None, retries=3, retry_backoff_seconds=0.05))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(ServiceUnavailable) as err:
        client.stat("bucket", "key.pdf")
    assert "after 3 attempts" in str(err.value)
    assert err.value.exit_code == 69  # transient: retried by the workflows
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert time.monotonic() - started >= 0.05 * 0.8 + 0.1 * 0.8  # backoff doubled


def test_retry_recovers_from_transient_failures() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "ok"

    result = retry(flaky, what="flaky", transient=lambda e: True, attempts=5, backoff=0)
    assert (result, len(calls)) == ("ok", 3)


def test_permanent_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        retry(broken, what="broken", transient=lambda e: False, attempts=5, backoff=0)
    assert len(calls) == 1


def test_no_endpoint_is_a_config_error(clean_env: object) -> None:
    with pytest.raises(ConfigError, match="s3.endpoint is not set"):
        open_client(settings_mod.load())


# -- artifacts: an s3:// URI or a local path ---------------------------------------------------


def test_s3_uris_are_checked() -> None:
    assert storage_mod.split_s3("s3://runs/wf-1/adapter/") == ("runs", "wf-1/adapter/")
    with pytest.raises(ConfigError, match="not an s3://bucket/key URI"):
        storage_mod.split_s3("s3:///key")
    with pytest.raises(ConfigError, match="s3.endpoint is not set"):
        storage_mod.read_bytes(settings_mod.Settings(), "s3://bucket/key")
    with pytest.raises(ConfigError, match="cannot read"):
        storage_mod.read_bytes(settings_mod.Settings(), "/no/such/file.jsonl")


def test_a_directory_round_trips_through_object_storage(s3_server: Service, tmp_path: Path) -> None:
    settings = s3_settings(s3_server)
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "nested" / "b.bin").write_bytes(b"\x00\x01")
    storage_mod.upload_path(settings, src, "s3://artifacts/wf-1/adapter")
    out = storage_mod.download_prefix(settings, "s3://artifacts/wf-1/adapter/", tmp_path / "out")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "a.json",
        "nested/b.bin",
    ]
    assert (out / "nested" / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ConfigError, match="no objects under this prefix"):
        storage_mod.download_prefix(settings, "s3://artifacts/nothing/", tmp_path / "none")
