"""A stand-in for the pinned vLLM OpenAI-compatible server (vllm/vllm-openai:v0.33.0).

vLLM cannot run on these machines (no GPU; its wheel pins torch 2.14, ours 2.13), so the tier's
tests talk to this FastAPI app instead (vLLM's API server is FastAPI too). It implements exactly
the routes BigBertha uses, with the request models, status codes, body shapes and messages of
vLLM 0.33.0's source (paths relative to the `vllm/` package of the release wheel):

- ``GET /health`` -> 200, empty body (``entrypoints/serve/instrumentator/health.py::health``).
- ``GET /v1/models`` -> ModelList of the served names and the loaded adapters
  (``entrypoints/openai/models/serving.py::OpenAIServingModels.show_available_models``;
  ``ModelCard``/``ModelPermission`` in ``entrypoints/serve/engine/protocol.py``).
- ``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``: registered only with
  VLLM_ALLOW_RUNTIME_LORA_UPDATING (``entrypoints/serve/lora/api_router.py``); checks, messages
  and the "text/plain success" body of ``OpenAIServingModels.load_lora_adapter``,
  ``unload_lora_adapter`` and ``_check_*_request``; the engine-side load reads the adapter like
  ``lora/worker_manager.py::WorkerLoRAManager._load_adapter`` does (adapter_config.json through
  ``lora/peft_helper.py::PEFTHelper.from_local_dir``/``validate_legal``, then tensors:
  ``lora/lora_model.py::LoRAModel.from_local_checkpoint``), a missing file being the 404
  ``exceptions.py::LoRAAdapterNotFoundError``.
- ``POST /v1/chat/completions``: ``BaseServing._check_model`` (``entrypoints/serve/engine/
  serving.py``), including a resolver lookup for unknown names like
  ``plugins/lora_resolvers/filesystem_resolver.py::FilesystemResolver``; the JSON response and
  the SSE stream framing of ``entrypoints/openai/chat_completion/serving.py``
  (``chat_completion_stream_generator``: ``data: <chunk>\\n\\n`` ... ``data: [DONE]\\n\\n``, chunks
  dumped with ``exclude_unset``, a usage-only chunk with ``stream_options.include_usage``).
- Errors: ``ErrorResponse`` with the status equal to ``error.code``
  (``exception_handling/error_response.py::create_error_response``), messages passed through
  ``exception_handling/utils.py::sanitize_message``; request validation failures as
  ``exception_handling/handlers/validation.py::validation_exception_handler`` shapes them; a JSON
  Content-Type enforced by ``serve/utils/api_utils.py::validate_json_request``; ``--api-key``
  guarding /v1 only (``serve/middleware/authenticate.py``: 401 ``{"error": "Unauthorized"}``).
- ``GET /metrics``: a few of the metric families ``v1/metrics/loggers.py::PrometheusStatLogger``
  exports, with its names and ``model_name``/``engine`` labels (what the dashboard queries).

Answers are deterministic text naming the model that served them, so tests can tell the
champion's adapter from the base model.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

GUARDED_PREFIX = ("/v1", "/v2", "/inference", "/cohere")


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's OpenAIBaseModel keeps unknown fields


class LoadLoRAAdapterRequest(BaseModel):  # entrypoints/serve/lora/protocol.py
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str
    lora_int_id: int | None = Field(default=None)


class StreamOptions(_Base):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ChatCompletionRequest(_Base):  # the fields BigBertha sends
    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class ErrorInfo(_Base):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(_Base):
    error: ErrorInfo


class DeltaMessage(_Base):
    role: str | None = None
    content: str | None = None


class StreamChoice(_Base):
    index: int
    delta: DeltaMessage
    logprobs: Any | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class UsageInfo(_Base):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


class StreamResponse(_Base):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    kv_transfer_params: dict[str, Any] | None = None


def sanitize_message(message: str) -> str:
    """exception_handling/utils.py::sanitize_message, as in vLLM 0.33.0."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def error(
    message: str, err_type: str, status: HTTPStatus, param: str | None = None
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorInfo(
            message=sanitize_message(message), type=err_type, code=status.value, param=param
        )
    )
    return JSONResponse(body.model_dump(), status_code=status.value)


def _permission() -> dict[str, Any]:
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": int(time.time()),
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


@dataclass
class Lora:
    name: str
    int_id: int
    path: str


@dataclass
class FakeVllm:
    """`vllm serve <model> --served-model-name <names...> --enable-lora ...` in miniature."""

    model: str  # the --model argument (a path), as model_config.model
    served_names: list[str]
    max_lora_rank: int = 16
    runtime_lora_updating: bool = True  # VLLM_ALLOW_RUNTIME_LORA_UPDATING
    resolver_cache_dir: str | None = None  # VLLM_LORA_RESOLVER_CACHE_DIR
    api_key: str | None = None
    max_model_len: int = 4096
    loras: dict[str, Lora] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path) received
    answered: list[str] = field(default_factory=list)  # the model name of every answer
    fail_load_with: str | None = None  # an engine failure to simulate on the next loads
    _counter: int = 0
    _server: Any = None
    _thread: threading.Thread | None = None
    url: str = ""

    # --- OpenAIServingModels ---------------------------------------------------------------

    def is_base_model(self, name: str | None) -> bool:
        return name in self.served_names

    def _engine_add_lora(self, lora: Lora) -> None:
        """What the engine does before load_lora_adapter returns 200 (worker_manager)."""
        if self.fail_load_with:
            raise RuntimeError(self.fail_load_with)
        path = lora.path  # absolute: used as is (lora/utils.py::get_adapter_absolute_path)
        config_path = os.path.join(path, "adapter_config.json")
        if not os.path.isfile(config_path):  # open() in PEFTHelper.from_local_dir
            raise FileNotFoundError(config_path)
        with open(config_path) as f:
            config = json.load(f)
        missing = {"r", "lora_alpha", "target_modules"} - set(config)
        if missing:
            raise ValueError(f"Missing required configuration fields: {missing}")
        rank = max([int(config["r"]), *(config.get("rank_pattern") or {}).values()])
        if rank > self.max_lora_rank:
            raise ValueError(
                f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}."
            )
        tensors = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
        if not any(os.path.isfile(os.path.join(path, t)) for t in tensors):
            raise ValueError(f"{path} doesn't contain tensors")

    def load(self, request: LoadLoRAAdapterRequest) -> JSONResponse | Response:
        name = request.lora_name
        if not name or not request.lora_path:
            return error(
                "Both 'lora_name' and 'lora_path' must be provided.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        if self.is_base_model(name):
            return error(
                f"The lora adapter '{name}' conflicts with a served base model.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        if not request.load_inplace and name in self.loras:
            return error(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        if name in self.loras:
            int_id = self.loras[name].int_id
        else:
            self._counter += 1
            int_id = self._counter
        lora = Lora(name, int_id, request.lora_path)
        try:
            self._engine_add_lora(lora)
        except FileNotFoundError:
            return error(
                f"Loading lora {name} failed: No adapter found for {request.lora_path}",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
            )
        except Exception as exc:
            return error(str(exc), "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR)
        self.loras[name] = lora
        return Response(
            status_code=200, content=f"Success: LoRA adapter '{name}' added successfully."
        )

    def unload(self, request: UnloadLoRAAdapterRequest) -> JSONResponse | Response:
        name = request.lora_name
        if not name:
            return error(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
                HTTPStatus.BAD_REQUEST,
            )
        if name not in self.loras:
            return error(
                f"The lora adapter '{name}' cannot be found.",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
            )
        del self.loras[name]  # and nothing else: vLLM never calls engine_client.remove_lora
        return Response(
            status_code=200, content=f"Success: LoRA adapter '{name}' removed successfully."
        )

    def resolve(self, name: str) -> JSONResponse | None:
        """FilesystemResolver.resolve_lora, then OpenAIServingModels.resolve_lora: None when
        loaded, a 404 when nothing was found, a 400 when found but not loadable."""
        path = os.path.join(self.resolver_cache_dir or "", name)
        config_path = os.path.join(path, "adapter_config.json")
        found = False
        if self.resolver_cache_dir and os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
            if config["peft_type"] == "LORA" and config["base_model_name_or_path"] == self.model:
                found = True
                self._counter += 1
                lora = Lora(name, self._counter, path)
                try:
                    self._engine_add_lora(lora)
                except BaseException:
                    pass  # "Failed to load LoRA ... Trying next resolver."
                else:
                    self.loras[name] = lora
                    return None
        if found:
            return error(
                f"LoRA adapter '{name}' was found but could not be loaded.",
                "BadRequestError",
                HTTPStatus.BAD_REQUEST,
            )
        return error(f"LoRA adapter {name} does not exist", "NotFoundError", HTTPStatus.NOT_FOUND)

    def check_model(self, name: str | None) -> JSONResponse | None:
        if not name or self.is_base_model(name) or name in self.loras:
            return None
        if self.runtime_lora_updating:
            resolved = self.resolve(name)
            if resolved is None:
                return None
            if resolved.status_code == HTTPStatus.BAD_REQUEST:
                return resolved
        return error(
            f"The model `{name}` does not exist. Valid aliases: {', '.join(self.served_names)}.",
            "NotFoundError",
            HTTPStatus.NOT_FOUND,
            param="model",
        )

    # --- chat completions ------------------------------------------------------------------

    def _answer(self, request: ChatCompletionRequest) -> tuple[str, list[str], str, int]:
        model = request.model if request.model and request.model in self.loras else None
        name = model or self.served_names[0]  # OpenAIServingModels.model_name(lora_request)
        words = f"Answered by {name} from {len(request.messages)} messages.".split(" ")
        tokens = [w + " " for w in words[:-1]] + [words[-1]]
        limit = request.max_completion_tokens or request.max_tokens
        finish = "stop"
        if limit is not None and limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.messages)
        self.answered.append(name)
        return name, tokens, finish, prompt

    def chat(self, request: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        failed = self.check_model(request.model)
        if failed is not None:  # before any streaming starts: a plain JSON error
            return failed
        name, tokens, finish, prompt = self._answer(request)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = UsageInfo(
            prompt_tokens=prompt, completion_tokens=len(tokens), total_tokens=prompt + len(tokens)
        )
        if not request.stream:
            return JSONResponse(
                {
                    "id": request_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": finish,
                            "stop_reason": None,
                        }
                    ],
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": usage.model_dump(),
                    "prompt_logprobs": None,
                    "kv_transfer_params": None,
                }
            )
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunks() -> Iterator[str]:
            first = StreamResponse(
                id=request_id,
                created=created,
                model=name,
                choices=[
                    StreamChoice(
                        index=0,
                        delta=DeltaMessage(role="assistant", content=""),
                        logprobs=None,
                        finish_reason=None,
                    )
                ],
                prompt_token_ids=None,
                prompt_text=None,
            )
            yield first
            for i, token in enumerate(tokens):
                last = i == len(tokens) - 1
                choice = (
                    StreamChoice(
                        index=0,
                        delta=DeltaMessage(content=token),
                        logprobs=None,
                        finish_reason=finish,
                        stop_reason=None,
                        token_ids=None,
                    )
                    if last
                    else StreamChoice(
                        index=0,
                        delta=DeltaMessage(content=token),
                        logprobs=None,
                        finish_reason=None,
                        token_ids=None,
                    )
                )
                yield StreamResponse(id=request_id, created=created, model=name, choices=[choice])
            if include_usage:
                yield StreamResponse(
                    id=request_id, created=created, model=name, choices=[], usage=usage
                )

        def frames() -> Iterator[str]:
            for chunk in chunks():
                data = chunk.model_dump_json(exclude_unset=True, exclude_none=not chunk.choices)
                yield f"data: {data}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    # --- the app ---------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()
        fake = self

        async def validate_json_request(raw_request: Request) -> None:
            content_type = raw_request.headers.get("content-type", "").lower()
            if content_type.split(";", maxsplit=1)[0] != "application/json":
                raise RequestValidationError(
                    errors=["Unsupported Media Type: Only 'application/json' is allowed"]
                )

        @app.exception_handler(RequestValidationError)
        async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
            errors = exc.errors()
            param = None
            if errors and isinstance(errors[0], dict) and errors[0].get("loc"):
                param = ".".join(str(p) for p in errors[0]["loc"])
            label = "error" if len(errors) == 1 else "errors"
            message = f"{len(errors)} validation {label}:\n" + "".join(
                f"  {err}\n" for err in errors[:10]
            )
            bad = HTTPStatus.BAD_REQUEST
            return error(message.rstrip(), bad.phrase, bad, param)

        @app.middleware("http")
        async def authenticate(request: Request, call_next: Any) -> Any:
            fake.calls.append((request.method, request.url.path))
            guarded = fake.api_key and request.url.path.startswith(GUARDED_PREFIX)
            if guarded and request.headers.get("authorization") != f"Bearer {fake.api_key}":
                return JSONResponse(content={"error": "Unauthorized"}, status_code=401)
            return await call_next(request)

        @app.get("/health")
        def health() -> Response:
            return Response(status_code=200)

        @app.get("/v1/models")
        def models() -> JSONResponse:
            cards = [
                {
                    "id": name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": fake.model,
                    "parent": None,
                    "max_model_len": fake.max_model_len,
                    "permission": [_permission()],
                }
                for name in fake.served_names
            ]
            cards += [
                {
                    "id": lora.name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": lora.path,
                    "parent": fake.served_names[0],
                    "max_model_len": None,
                    "permission": [_permission()],
                }
                for lora in fake.loras.values()
            ]
            return JSONResponse({"object": "list", "data": cards})

        if self.runtime_lora_updating:

            @app.post("/v1/load_lora_adapter", dependencies=[Depends(validate_json_request)])
            def load(request: LoadLoRAAdapterRequest) -> Response:
                return fake.load(request)

            @app.post("/v1/unload_lora_adapter", dependencies=[Depends(validate_json_request)])
            def unload(request: UnloadLoRAAdapterRequest) -> Response:
                return fake.unload(request)

        @app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
        def chat(request: ChatCompletionRequest) -> Response:
            return fake.chat(request)

        @app.get("/metrics")
        def metrics() -> Response:
            return Response(fake.metrics_text(), media_type="text/plain; version=0.0.4")

        return app

    def metrics_text(self) -> bytes:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

        registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        values = (self.served_names[0], "0")
        Gauge("vllm:num_requests_running", "running", labels, registry=registry).labels(*values)
        Gauge("vllm:num_requests_waiting", "waiting", labels, registry=registry).labels(*values)
        kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage", labels, registry=registry)
        kv.labels(*values).set(0.25)
        answers = len(self.answered)
        for name in ("vllm:generation_tokens", "vllm:prompt_tokens"):
            Counter(name, name, labels, registry=registry).labels(*values).inc(7 * answers)
        for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
            histogram = Histogram(name, name, labels, registry=registry).labels(*values)
            for _ in range(answers):
                histogram.observe(0.05)
        return generate_latest(registry)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeVllm:
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self._server.started, "the fake vLLM server did not start"
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def write_adapter(
    directory: Path, *, rank: int = 8, base: str = "meta-llama/Llama-2-7b-chat-hf"
) -> Path:
    """The two files vLLM reads from a PEFT adapter directory."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    return directory
