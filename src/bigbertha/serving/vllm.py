"""A client for the parts of the pinned vLLM server (vllm/vllm-openai:v0.33.0) the sidecar uses.

Each route and error shape below was read in vLLM 0.33.0's own source (paths relative to the
`vllm/` package of the release wheel):

- ``GET /health``: 200 with an empty body once the engine runs, 503 when it died
  (``entrypoints/serve/instrumentator/health.py::health``).
- ``GET /v1/models``: ``{"object": "list", "data": [ModelCard, ...]}``; the served base names
  have ``parent: null``, every loaded adapter has ``parent`` = the base name and ``root`` = its
  path (``entrypoints/openai/models/serving.py::OpenAIServingModels.show_available_models``).
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 with a plain-text body
  ``Success: LoRA adapter '<name>' added successfully.`` once the engine has loaded it; an error
  is an ``ErrorResponse`` ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status
  equal to ``code`` (``entrypoints/serve/lora/api_router.py::_attach_router``,
  ``OpenAIServingModels.load_lora_adapter`` and ``_check_load_lora_adapter_request``):
  400 ``InvalidUserInput`` "... has already been loaded ..." or "... conflicts with a served base
  model."; 404 ``NotFoundError`` "Loading lora <name> failed: No adapter found for <path>"
  (``exceptions.py::LoRAAdapterNotFoundError``); 500 ``InternalServerError`` for any other load
  failure (rank above --max-lora-rank, unsupported modules, bad tensors).
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200 text, or 404 ``NotFoundError`` "The lora
  adapter '<name>' cannot be found.". It only forgets the name; the engine keeps the weights in
  its LRU cache (vllm-project/vllm#54839), so --max-cpu-loras leaves room for that.
- The two routes exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``
  (``api_router.attach_router``); otherwise FastAPI answers 404 ``{"detail": "Not Found"}``.
- With ``--api-key``, paths under /v1 answer 401 ``{"error": "Unauthorized"}`` without it
  (``entrypoints/serve/middleware/authenticate.py``); /health and /metrics are not guarded.
- Error messages pass through ``exception_handling/utils.py::sanitize_message``, which turns
  most absolute paths into ``<path>``: never rely on a path being echoed back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from bigbertha.core.errors import ConfigError, InputError, ServiceUnavailable

log = logging.getLogger(__name__)


class VllmUnavailable(ServiceUnavailable):
    """The vLLM server did not answer (still loading its model, restarting, or down)."""


class AdapterRejected(InputError):
    """vLLM refused an adapter: its files are missing, or it cannot run on this server (rank
    above --max-lora-rank, modules it cannot adapt, bad tensors)."""


@dataclass(frozen=True)
class ApiError:
    """vLLM's ErrorResponse (``entrypoints/serve/engine/protocol.py::ErrorInfo``)."""

    status: int
    type: str
    message: str
    param: str | None = None


def parse_error(response: httpx.Response) -> ApiError:
    """The ``error`` object of a failed call, whatever shape the body has."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(
            status=response.status_code,
            type=str(error.get("type", "")),
            message=str(error.get("message", "")),
            param=error.get("param"),
        )
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # the 401 of --api-key
        return ApiError(response.status_code, body["error"], body["error"])
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own 404 for an absent route
        return ApiError(response.status_code, "NotFound", str(body["detail"]))
    text = response.text.strip().splitlines()
    return ApiError(response.status_code, "", text[0][:300] if text else response.reason_phrase)


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str
    parent: str


class VllmClient:
    """The runtime-LoRA admin calls, made from inside the vLLM pod (localhost)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A load reads the adapter and warms it into the engine before answering: give it time.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise VllmUnavailable(f"vLLM at {self.base_url}{path}: {reason}") from exc

    def _unexpected(self, path: str, error: ApiError) -> Exception:
        where = f"vLLM at {self.base_url}{path}"
        if error.status == 401:
            return ConfigError(
                f"{where}: 401 {error.message}: serving.api_key does not match vLLM's --api-key"
            )
        if error.status == 404 and error.type == "NotFound":
            return ConfigError(
                f"{where}: route not found: start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=true "
                "and --enable-lora"
            )
        if error.status >= 500 or error.status in (408, 429):
            return VllmUnavailable(f"{where}: {error.status} {error.type}: {error.message}")
        return ConfigError(f"{where}: {error.status} {error.type}: {error.message}")

    def healthy(self) -> bool:
        """True once the engine is up (GET /health answers 200)."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """The ModelCards of GET /v1/models."""
        response = self._call("GET", "/v1/models")
        if response.status_code != 200:
            raise self._unexpected("/v1/models", parse_error(response))
        try:
            data = response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise VllmUnavailable(f"vLLM at {self.base_url}/v1/models: not a model list") from exc
        return [card for card in data if isinstance(card, dict)]

    def base_models(self) -> list[str]:
        return [str(c["id"]) for c in self.models() if c.get("parent") is None]

    def adapters(self) -> dict[str, LoadedAdapter]:
        """Loaded adapters by name (the cards with a parent)."""
        return {
            str(c["id"]): LoadedAdapter(str(c["id"]), str(c.get("root") or ""), str(c["parent"]))
            for c in self.models()
            if c.get("parent") is not None
        }

    def load_adapter(self, name: str, path: str) -> Literal["loaded", "already-loaded"]:
        """Load the adapter directory `path` (absolute: vLLM treats a relative path that does
        not exist as a Hugging Face repo id, ``lora/utils.py::get_adapter_absolute_path``)."""
        route = "/v1/load_lora_adapter"
        response = self._call("POST", route, {"lora_name": name, "lora_path": path})
        if response.status_code == 200:
            return "loaded"
        error = parse_error(response)
        if error.status == 400 and "has already been loaded" in error.message:
            return "already-loaded"
        if error.status == 404 and error.type == "NotFoundError":
            raise AdapterRejected(f"vLLM found no adapter for {name} at {path}: {error.message}")
        if error.status == 500 and error.type == "InternalServerError":
            raise AdapterRejected(f"vLLM cannot load adapter {name}: {error.message}")
        raise self._unexpected(route, error)

    def unload_adapter(self, name: str) -> Literal["unloaded", "not-loaded"]:
        route = "/v1/unload_lora_adapter"
        response = self._call("POST", route, {"lora_name": name})
        if response.status_code == 200:
            return "unloaded"
        error = parse_error(response)
        if error.status == 404 and error.type == "NotFoundError":
            return "not-loaded"
        raise self._unexpected(route, error)

    def metrics(self) -> tuple[bytes, str]:
        """vLLM's Prometheus exposition, as it was served (body, content type)."""
        response = self._call("GET", "/metrics")
        if response.status_code != 200:
            raise self._unexpected("/metrics", parse_error(response))
        return response.content, response.headers.get("content-type", "text/plain")
