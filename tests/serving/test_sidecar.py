"""The sidecar process: readiness follows the first pass that reached vLLM, /status shows the
last pass, /metrics relays vLLM's own exposition (the only port Prometheus may reach)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bigbertha.core.errors import ServiceUnavailable
from bigbertha.core.settings import Settings
from bigbertha.serving.adapters import SyncReport
from bigbertha.serving.sidecar import Sidecar, _handler
from bigbertha.serving.vllm import VllmClient, VllmUnavailable
from tests.serving.fake_vllm import FakeVllm


class _Sync:
    """An AdapterSync stand-in whose next pass raises or reports."""

    def __init__(self, vllm: VllmClient) -> None:
        self.vllm = vllm
        self.outcome: Exception | SyncReport = VllmUnavailable("vLLM at ...: connection refused")

    def sync_once(self) -> SyncReport:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def running() -> Iterator[tuple[Sidecar, _Sync, FakeVllm, str]]:
    vllm = FakeVllm(model="/models/base", served_names=["base"]).start()
    sync = _Sync(VllmClient(vllm.url))
    car = Sidecar(Settings(), sync)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(car))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield car, sync, vllm, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    vllm.stop()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def test_ready_only_once_a_pass_reached_vllm(running: Any) -> None:
    car, sync, _, url = running
    car.run_once()  # vLLM still loading its model
    assert _get(f"{url}/healthz").status_code == 200
    assert _get(f"{url}/readyz").status_code == 503
    sync.outcome = SyncReport(aliases={"champion": "3"}, serving={"champion": "m-v3"})
    car.run_once()
    assert _get(f"{url}/readyz").status_code == 200
    status = _get(f"{url}/status").json()
    assert status["ready"] and status["passes"] == 1 and status["failures"] == 1
    assert status["last"]["serving"] == {"champion": "m-v3"}


def test_a_registry_outage_does_not_keep_a_new_pod_out_of_the_service(running: Any) -> None:
    car, sync, _, url = running
    sync.outcome = ServiceUnavailable("MLflow at http://mlflow: connection refused")
    car.run_once()
    assert _get(f"{url}/readyz").status_code == 200  # vLLM answers: serve the base meanwhile
    assert "MLflow" in _get(f"{url}/status").json()["last_error"]


def test_metrics_are_vllms_own_relayed(running: Any) -> None:
    _, _, vllm, url = running
    response = _get(f"{url}/metrics")
    assert response.status_code == 200
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_running"} <= names
    vllm.stop()
    assert _get(f"{url}/metrics").status_code == 503
