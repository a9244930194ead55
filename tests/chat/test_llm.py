"""LLM backends and the model server: SmolLM2 in process, an OpenAI-compatible endpoint, and
champion hot-swap (swap, in-flight answers, failed loads, registry down)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bigbertha.chat.llm import (
    ChatModel,
    GenerationError,
    Message,
    ModelLoadError,
    load_openai,
)
from bigbertha.chat.model_server import ModelServer
from bigbertha.core.settings import Settings
from tests.chat.helpers import smollm2_chat_model
from tests.services import free_port

QUESTION: list[Message] = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.mark.slow
def test_smollm2_streams_an_answer_and_counts_tokens() -> None:
    model = smollm2_chat_model()
    assert model.version == "smollm2"
    stream = model.stream(QUESTION, max_new_tokens=12, temperature=0.0)
    deltas = list(stream)
    assert len(deltas) > 1, "generation must arrive in pieces, not all at once"
    assert "Paris" in "".join(deltas)
    assert stream.prompt_tokens > 10 and 0 < stream.completion_tokens <= 12


# --- OpenAI-compatible endpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_endpoint() -> Iterator[dict[str, Any]]:
    """A real HTTP server speaking the OpenAI streaming chat protocol (as vLLM/TGI do)."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    seen: dict[str, Any] = {}

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        if request.path != "/v1/chat/completions":
            return Response("not found", status=404)
        body = json.loads(request.data)
        seen["body"] = body
        seen["auth"] = request.headers.get("Authorization")

        def events() -> Iterator[str]:
            for word in ["Refunds ", "take ", "5 days ", "[1]."]:
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"api_base": f"http://127.0.0.1:{port}/v1", "seen": seen}
    server.shutdown()
    thread.join(5)


def test_openai_backend_streams_from_the_endpoint(openai_endpoint: dict[str, Any]) -> None:
    settings = Settings(
        llm={
            "backend": "openai",
            "model": "llama-2-7b-chat",
            "api_base": openai_endpoint["api_base"],
            "api_key": "sk-test",
        },
        chat={"champion_alias": ""},  # the endpoint's own model, no registry
    )
    server = ModelServer.from_settings(settings).start()
    model = server.current()
    assert model.version == "llama-2-7b-chat"
    stream = model.stream(QUESTION, max_new_tokens=7, temperature=0.0)
    assert list(stream) == ["Refunds ", "take ", "5 days ", "[1]."]
    assert stream.completion_tokens == 4 and stream.prompt_tokens > 0
    body = openai_endpoint["seen"]["body"]
    assert body["stream"] is True and body["max_tokens"] == 7 and body["model"] == "llama-2-7b-chat"
    assert body["messages"][1] == {"role": "user", "content": "What is the capital of France?"}
    assert openai_endpoint["seen"]["auth"] == "Bearer sk-test"


def test_openai_endpoint_down_is_a_generation_error() -> None:
    settings = Settings(
        llm={"backend": "openai", "model": "m", "api_base": f"http://127.0.0.1:{free_port()}/v1"}
    )
    stream = load_openai(settings).stream(QUESTION, max_new_tokens=4, temperature=0.0)
    with pytest.raises(GenerationError, match="LLM endpoint http://127.0.0.1"):
        list(stream)


def test_openai_backend_without_api_base_says_what_to_set() -> None:
    with pytest.raises(ModelLoadError, match="BIGBERTHA_LLM__API_BASE"):
        load_openai(Settings(llm={"backend": "openai"}))


# --- hot-swap machinery with an injected loader ----------------------------------------------


class _Stream:
    def __init__(self, version: str, gate: threading.Event | None) -> None:
        self.version = version
        self.gate = gate
        self.prompt_tokens = 1
        self.completion_tokens = 0

    def __iter__(self) -> Iterator[str]:
        yield f"answer from {self.version}"
        if self.gate is not None:
            assert self.gate.wait(10)
        self.completion_tokens = 2
        yield " (done)"

    def close(self) -> None:
        pass


class _Model:
    """A stand-in chat model: the hot-swap logic is what is under test here."""

    def __init__(self, ref: str, gate: threading.Event | None = None) -> None:
        self.ref = ref
        self.version = ref.rsplit("/", 1)[-1]
        self.gate = gate

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> _Stream:
        return _Stream(self.version, self.gate)


class _Registry:
    def __init__(self) -> None:
        self.champion: str | None = "models:/m/1"
        self.down = False

    def __call__(self) -> str | None:
        if self.down:
            raise ConnectionError("MLflow at http://mlflow:5000: connection refused")
        return self.champion


def test_swap_keeps_in_flight_answers_on_the_old_model() -> None:
    registry = _Registry()
    gate = threading.Event()
    loads: list[str] = []

    def load(ref: str) -> _Model:
        loads.append(ref)
        return _Model(ref, gate)

    server = ModelServer(load, fallback_ref="smollm2", champion=registry)
    swapped_in: list[str] = []
    server.on_swap = lambda model: swapped_in.append(model.version)
    server.start(watch=False)
    assert server.status().version == "1" and swapped_in == []  # the first load is no swap
    in_flight = iter(server.current().stream(QUESTION, max_new_tokens=4, temperature=0))
    assert next(in_flight) == "answer from 1"

    registry.champion = "models:/m/2"
    assert server.check_now() is True
    assert server.current().version == "2" and server.status().swaps == 1
    assert swapped_in == ["2"]
    gate.set()
    assert next(in_flight) == " (done)"  # the answer that started on 1 finished on 1
    assert server.check_now() is False  # unchanged alias: nothing reloaded
    assert loads == ["models:/m/1", "models:/m/2"]
    assert server.status().history == ["1", "2"] and swapped_in == ["2"]


def test_a_failing_swap_hook_does_not_undo_the_swap() -> None:
    registry = _Registry()
    server = ModelServer(_Model, fallback_ref="smollm2", champion=registry).start(watch=False)

    def broken(model: ChatModel) -> None:
        raise ConnectionError("redis down")

    server.on_swap = broken
    registry.champion = "models:/m/2"
    assert server.check_now() is True and server.current().version == "2"


def test_failed_load_keeps_the_current_model_and_says_why() -> None:
    registry = _Registry()

    def load(ref: str) -> _Model:
        if ref.endswith("/2"):
            raise OSError("adapter_model.safetensors: truncated file")
        return _Model(ref)

    server = ModelServer(load, fallback_ref="smollm2", champion=registry).start(watch=False)
    registry.champion = "models:/m/2"
    assert server.check_now() is False
    status = server.status()
    assert server.current().version == "1" and status.load_failures == 1
    assert "models:/m/2 failed to load" in (status.last_error or "")
    assert "truncated" in (status.last_error or "")


def test_registry_down_keeps_serving_and_is_counted() -> None:
    registry = _Registry()
    server = ModelServer(_Model, fallback_ref="smollm2", champion=registry).start(watch=False)
    registry.down = True
    assert server.check_now() is False and server.check_now() is False
    status = server.status()
    assert server.current().version == "1"
    assert not status.registry_ok and status.registry_failures == 2
    assert "registry unreachable" in (status.last_error or "")
    registry.down = False
    server.check_now()
    assert server.status().registry_ok


def test_start_with_registry_down_serves_the_fallback_model() -> None:
    registry = _Registry()
    registry.down = True
    server = ModelServer(_Model, fallback_ref="smollm2", champion=registry).start(watch=False)
    assert server.current().ref == "smollm2"
    assert server.status().registry_failures == 1 and not server.status().registry_ok


def test_background_watch_swaps_without_being_asked() -> None:
    registry = _Registry()
    server = ModelServer(_Model, fallback_ref="smollm2", champion=registry, poll_seconds=0.05)
    server.start(watch=True)
    try:
        registry.champion = "models:/m/7"
        deadline = time.monotonic() + 5
        while server.current().version != "7" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.current().version == "7"
    finally:
        server.stop()


def test_a_removed_alias_brings_back_the_fallback_model() -> None:
    """No champion any more (not: the registry is down): serve the fallback, e.g. the tier's
    base model, instead of an adapter the tier's sidecar has unloaded."""
    registry = _Registry()
    server = ModelServer(_Model, fallback_ref="base", champion=registry).start(watch=False)
    registry.champion = None
    assert server.check_now() is True and server.current().ref == "base"
    assert server.check_now() is False


def test_openai_backend_asks_for_a_registry_version_by_its_served_name(tmp_path: Path) -> None:
    from tests.serving.fake_vllm import FakeVllm

    vllm = FakeVllm(model="/models/base", served_names=["base"]).start()
    try:
        settings = Settings(
            llm={"backend": "openai", "model": "base", "api_base": f"{vllm.url}/v1"}
        )
        with pytest.raises(ModelLoadError, match="does not serve bigbertha-llm-v7 yet"):
            load_openai(settings, "models:/bigbertha-llm/7")
        adapter = tmp_path / "bigbertha-llm-v7"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(
            '{"r": 8, "lora_alpha": 16, "target_modules": []}'
        )
        (adapter / "adapter_model.safetensors").write_bytes(b"w")
        vllm.loras.clear()
        import httpx

        httpx.post(
            f"{vllm.url}/v1/load_lora_adapter",
            json={"lora_name": "bigbertha-llm-v7", "lora_path": str(adapter)},
        ).raise_for_status()
        model = load_openai(settings, "models:/bigbertha-llm/7")
        assert (model.ref, model.version) == ("models:/bigbertha-llm/7", "7")
        stream = model.stream(QUESTION, max_new_tokens=16, temperature=0.0)
        assert "".join(stream).startswith("Answered by bigbertha-llm-v7 ")
        # vLLM's usage chunk (stream_options.include_usage) gives the true counts.
        assert stream.completion_tokens == 6 and stream.prompt_tokens == 11  # words, in the fake
        with pytest.raises(ModelLoadError, match="pin a registry version"):
            load_openai(settings, "models:/bigbertha-llm@champion")
    finally:
        vllm.stop()


def test_unloadable_model_is_a_clear_error() -> None:
    def load(ref: str) -> _Model:
        raise OSError("no such directory")

    with pytest.raises(ModelLoadError, match="chat model smollm2: no such directory"):
        ModelServer(load, fallback_ref="smollm2").start()
