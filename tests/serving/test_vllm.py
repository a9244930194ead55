"""The sidecar's client for vLLM's runtime-LoRA API, against a server speaking vLLM 0.33.0's
routes and error shapes (tests/serving/fake_vllm.py says why a fake, and cites the source)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bigbertha.core.errors import ConfigError
from bigbertha.serving.vllm import (
    AdapterRejected,
    VllmClient,
    VllmUnavailable,
    parse_error,
)
from tests.services import free_port
from tests.serving.fake_vllm import FakeVllm, write_adapter

BASE = "meta-llama/Llama-2-7b-chat-hf"


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeVllm]:
    server = FakeVllm(model="/models/base", served_names=[BASE]).start()
    yield server
    server.stop()


@pytest.fixture
def client(vllm: FakeVllm) -> Iterator[VllmClient]:
    vllm.loras.clear()
    vllm.fail_load_with = None
    client = VllmClient(vllm.url, timeout=10)
    yield client
    client.close()


def test_load_list_and_unload_an_adapter(client: VllmClient, tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "bigbertha-llm-v3")
    assert client.healthy()
    assert client.load_adapter("bigbertha-llm-v3", str(path)) == "loaded"
    (loaded,) = client.adapters().values()
    assert (loaded.name, loaded.path, loaded.parent) == ("bigbertha-llm-v3", str(path), BASE)
    assert client.base_models() == [BASE]
    # A second load of the same name is vLLM's 400 "has already been loaded": done, not an error.
    assert client.load_adapter("bigbertha-llm-v3", str(path)) == "already-loaded"
    assert client.unload_adapter("bigbertha-llm-v3") == "unloaded"
    assert client.unload_adapter("bigbertha-llm-v3") == "not-loaded"  # vLLM's 404
    assert client.adapters() == {}


def test_a_missing_adapter_directory_is_rejected_with_vllms_reason(
    client: VllmClient, tmp_path: Path
) -> None:
    with pytest.raises(AdapterRejected, match="No adapter found for <path>"):
        client.load_adapter("bigbertha-llm-v4", str(tmp_path / "nothing-here"))
    assert client.adapters() == {}


def test_an_adapter_the_server_cannot_run_is_rejected(client: VllmClient, tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "wide", rank=64)
    with pytest.raises(AdapterRejected, match="LoRA rank 64 is greater than max_lora_rank 16"):
        client.load_adapter("bigbertha-llm-v5", str(path))


def test_a_name_taken_by_the_base_model_is_a_config_error(
    client: VllmClient, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="conflicts with a served base model"):
        client.load_adapter(BASE, str(write_adapter(tmp_path / "a")))


def test_an_engine_failure_is_vllms_500(client: VllmClient, vllm: FakeVllm, tmp_path: Path) -> None:
    vllm.fail_load_with = "CUDA out of memory"
    with pytest.raises(AdapterRejected, match="CUDA out of memory"):
        client.load_adapter("bigbertha-llm-v6", str(write_adapter(tmp_path / "a")))


def test_runtime_updating_off_says_which_switch(tmp_path: Path) -> None:
    server = FakeVllm(model="/m", served_names=["base"], runtime_lora_updating=False).start()
    try:
        client = VllmClient(server.url)
        with pytest.raises(ConfigError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=true"):
            client.load_adapter("x-v1", str(write_adapter(tmp_path / "a")))
    finally:
        server.stop()


def test_the_api_key_guards_v1_but_not_health(tmp_path: Path) -> None:
    server = FakeVllm(model="/m", served_names=["base"], api_key="sk-tier").start()
    try:
        stranger = VllmClient(server.url, api_key="wrong")
        assert stranger.healthy()  # /health is not under /v1
        with pytest.raises(ConfigError, match="401 Unauthorized: serving.api_key"):
            stranger.adapters()
        owner = VllmClient(server.url, api_key="sk-tier")
        assert owner.load_adapter("x-v1", str(write_adapter(tmp_path / "a"))) == "loaded"
    finally:
        server.stop()


def test_a_server_that_is_down_is_unavailable_not_an_error() -> None:
    client = VllmClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert not client.healthy()
    with pytest.raises(VllmUnavailable, match="vLLM at http://127.0.0.1"):
        client.adapters()


def test_error_bodies_of_every_shape_are_read() -> None:
    nested = httpx.Response(
        404,
        json={"error": {"message": "gone", "type": "NotFoundError", "param": None, "code": 404}},
    )
    assert parse_error(nested).type == "NotFoundError"
    assert parse_error(httpx.Response(401, json={"error": "Unauthorized"})).type == "Unauthorized"
    assert parse_error(httpx.Response(404, json={"detail": "Not Found"})).type == "NotFound"
    assert parse_error(httpx.Response(502, text="bad gateway\nmore")).message == "bad gateway"


def test_the_fake_keeps_vllms_json_content_type_rule(vllm: FakeVllm) -> None:
    """validate_json_request: a form post is vLLM's 400 with type "Bad Request"."""
    response = httpx.post(f"{vllm.url}/v1/load_lora_adapter", data={"lora_name": "x"})
    body = response.json()
    assert response.status_code == 400 and body["error"]["type"] == "Bad Request"
    assert "Only 'application/json' is allowed" in body["error"]["message"]
