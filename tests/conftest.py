"""Shared fixtures: real services on 127.0.0.1, stopped by PID when the session ends."""

from __future__ import annotations

import os
import sys

# Before any Hugging Face import: a missing model must fail at once, not hang on retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.models.helpers import task_rows, tiny_corpus, write_jsonl  # noqa: E402
from tests.services import Service, ServiceManager, missing  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIGBERTHA_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference data (../shared); required in CI."""
    if not SHARED.is_dir():
        missing(f"{SHARED} is absent: put ../shared beside the checkout (or set BIGBERTHA_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceManager]:
    """Starts services on demand; at teardown stops them all and asserts no PID survives."""
    manager = ServiceManager(tmp_path_factory.mktemp("services"))
    yield manager
    left = manager.stop_all()
    assert not left, f"service processes still running after teardown: {left}"


@pytest.fixture(scope="session")
def redis_server(services: ServiceManager) -> Service:
    return services.redis()


@pytest.fixture(scope="session")
def s3_server(services: ServiceManager) -> Service:
    return services.s3()


@pytest.fixture(scope="session")
def mlflow_server(services: ServiceManager) -> Service:
    return services.mlflow()


@pytest.fixture(scope="session")
def milvus_server(services: ServiceManager) -> Service:
    return services.milvus()


@pytest.fixture(scope="session")
def oidc_server(services: ServiceManager) -> Service:
    return services.oidc()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BIGBERTHA_* settings from the caller's environment; run in a fresh directory."""
    for name in list(os.environ):
        if name.startswith("BIGBERTHA_") and name != "BIGBERTHA_SHARED":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama saved as a transformers model directory (tests/models/helpers.py)."""
    from bigbertha.local.tiny_llama import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tiny_corpus())


@pytest.fixture(scope="session")
def task_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny task's rows as a prompt/completion JSONL file."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "task.jsonl", task_rows())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the milvus-lite servers that embedded `.db` URIs started while output is still
    captured: their own exit hook logs to a stream pytest has closed by then (a page of
    "Logging error" tracebacks after every run)."""
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()
