"""Fixtures of the document tests: S3 (moto) and a milvus-lite file, wired through BIGBERTHA_*."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import settings as settings_mod
from bigbertha.core.storage import Storage, open_client
from tests.documents.helpers import Env
from tests.services import Service


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "ingest.db")


@pytest.fixture(scope="module")
def bucket(s3_server: Service) -> Iterator[str]:
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    storage = open_client(_settings(s3_server, "unused"))
    storage.ensure_bucket(name)
    yield name


def _settings(
    server: Service, milvus_uri: str, **sections: dict[str, Any]
) -> settings_mod.Settings:
    overrides: dict[str, Any] = {
        "s3": {
            "endpoint": server.extra["endpoint"],
            "access_key": "testing",
            "secret_key": "testing-secret",
        },
        "milvus": {"uri": milvus_uri},
        "ingest": {"retries": 2, "retry_backoff_seconds": 0.01},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return settings_mod.load(overrides=overrides)


@pytest.fixture
def env(clean_env: Path, monkeypatch: pytest.MonkeyPatch, s3_server: Service, lite_uri: str) -> Env:
    """Point the CLI (through BIGBERTHA_* env) and the test at one fresh collection."""
    collection = f"t_{uuid.uuid4().hex[:10]}"

    def configure(milvus_uri: str = lite_uri, **sections: dict[str, Any]) -> settings_mod.Settings:
        sections["milvus"] = {"collection": collection, **sections.get("milvus", {})}
        settings = _settings(s3_server, milvus_uri, **sections)
        for section in ("s3", "milvus", "ingest"):
            for key, value in getattr(settings, section).model_dump().items():
                if value is not None:
                    value = getattr(value, "get_secret_value", lambda v=value: v)()
                    monkeypatch.setenv(f"BIGBERTHA_{section.upper()}__{key.upper()}", str(value))
        return settings

    return configure


@pytest.fixture(scope="module")
def storage(s3_server: Service) -> Storage:
    return open_client(_settings(s3_server, "unused"))
