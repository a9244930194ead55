"""Chat model backends and the per-process model server with champion hot-swap.

Two backends, chosen by `llm.backend`:
- `transformers`: the model runs in this process, loaded by
  `bigbertha.models.loading.load_causal_lm` (the offline SmolLM2, a path, a Hugging Face id or
  an MLflow registry model);
- `openai`: any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server) through LlamaIndex's
  `OpenAILike`.

`ModelServer` holds ONE model per process, shared by every chat session. With the transformers
backend and `chat.champion_alias` set, it polls the registry alias every
`chat.champion_poll_seconds`; when the alias moves it loads the new version in a background
thread and swaps it in with one reference assignment. An answer keeps the model object it started
with, so answers in flight finish on the old model; a failed load or an unreachable registry keeps
the current model and is logged, counted and shown in `status()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bigbertha.core.errors import BigberthaError
from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


class ModelLoadError(BigberthaError):
    """No chat model could be loaded: the message names the model and the reason."""


class GenerationError(BigberthaError):
    """The LLM backend failed while answering (endpoint down, out of memory, bad reply)."""


class TokenStream(Protocol):
    """Text deltas of one generation; token counts are final once iteration ends."""

    prompt_tokens: int
    completion_tokens: int

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class ChatModel(Protocol):
    """A loaded chat model: `version` labels every answer and metric it produces."""

    ref: str
    version: str

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> TokenStream: ...


# --- transformers, in process -------------------------------------------------------------


class _TransformersStream:
    """Runs `generate` in a worker thread and yields decoded text as it is produced."""

    def __init__(self, model: Any, tokenizer: Any, messages: Sequence[Message], **gen: Any) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self._cancel = threading.Event()
        self._error: BaseException | None = None
        cancel = self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        inputs = _chat_inputs(tokenizer, messages)
        self.prompt_tokens = int(inputs["input_ids"].shape[-1])
        self.completion_tokens = 0
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        temperature = gen.pop("temperature")
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        kwargs = {
            **inputs,
            **gen,
            **sampling,
            "do_sample": temperature > 0,
            "pad_token_id": pad,
            "streamer": self._streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
        }
        self._thread = threading.Thread(
            target=self._generate, args=(model, kwargs), name="bigbertha-generate", daemon=True
        )
        self._thread.start()

    def _generate(self, model: Any, kwargs: dict[str, Any]) -> None:
        import torch

        try:
            with torch.inference_mode():
                output = model.generate(**kwargs)
            self.completion_tokens = int(output.shape[-1]) - self.prompt_tokens
        except BaseException as exc:  # handed to the reader thread, raised there
            self._error = exc
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self._streamer:
                if text:
                    yield text
            self._thread.join()
            if self._error is not None:
                raise GenerationError(f"generation failed: {self._error}") from self._error
        finally:
            self._cancel.set()  # a reader that stops early frees the worker at the next token

    def close(self) -> None:
        self._cancel.set()


def _chat_inputs(tokenizer: Any, messages: Sequence[Message]) -> Any:
    """Token ids for a chat, through the model's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
    return tokenizer(text, return_tensors="pt")


@dataclass
class TransformersChatModel:
    """A causal LM and its tokenizer, shared read-only by concurrent generations."""

    model: Any
    tokenizer: Any
    version: str
    ref: str

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> TokenStream:
        return _TransformersStream(
            self.model,
            self.tokenizer,
            messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )


def load_transformers(ref: str, settings: Settings) -> TransformersChatModel:
    """Load `ref` (smollm2, path, HF id, models:/...) for inference on this machine."""
    from bigbertha.models.loading import load_causal_lm

    try:
        model, tokenizer, version = load_causal_lm(ref, settings)
    except BigberthaError as exc:
        raise ModelLoadError(f"chat model {ref}: {exc}") from exc
    model.eval()
    return TransformersChatModel(model=model, tokenizer=tokenizer, version=str(version), ref=ref)


# --- OpenAI-compatible endpoint ---------------------------------------------------------------


class _OpenAIStream:
    def __init__(self, llm: Any, messages: Sequence[Message]) -> None:
        self._llm = llm
        self._messages = messages
        # Until the server reports usage: about 4 characters per token, one token per delta.
        self.prompt_tokens = sum(len(m["content"]) for m in messages) // 4
        self.completion_tokens = 0
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        from llama_index.core.llms import ChatMessage

        chat = [ChatMessage(role=m["role"], content=m["content"]) for m in self._messages]
        try:
            for chunk in self._llm.stream_chat(chat):
                if self._closed:
                    return
                usage = getattr(chunk.raw, "usage", None)
                if usage is not None:
                    self.prompt_tokens = int(usage.prompt_tokens)
                    self.completion_tokens = int(usage.completion_tokens)
                if chunk.delta:
                    if usage is None:
                        self.completion_tokens += 1
                    yield chunk.delta
        except GenerationError:
            raise
        except Exception as exc:  # openai/httpx errors: the endpoint's failure, not our bug
            raise GenerationError(f"LLM endpoint {self._llm.api_base}: {exc}") from exc

    def close(self) -> None:
        self._closed = True


@dataclass
class OpenAIChatModel:
    """An OpenAI-compatible chat endpoint; `version` is the model name it serves."""

    llm: Any
    version: str
    ref: str

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> TokenStream:
        self.llm.max_tokens = max_new_tokens
        self.llm.temperature = temperature
        return _OpenAIStream(self.llm, messages)


def load_openai(settings: Settings) -> OpenAIChatModel:
    """An OpenAILike client for `llm.api_base` serving `llm.model`."""
    from llama_index.llms.openai_like import OpenAILike

    if not settings.llm.api_base:
        raise ModelLoadError(
            "llm.backend is 'openai' but llm.api_base is not set: "
            "set BIGBERTHA_LLM__API_BASE to the endpoint, e.g. http://vllm:8000/v1"
        )
    api_key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else "unused"
    llm = OpenAILike(
        model=settings.llm.model,
        api_base=settings.llm.api_base,
        api_key=api_key,
        is_chat_model=True,
        max_tokens=settings.llm.max_new_tokens,
        temperature=settings.llm.temperature,
        timeout=60.0,
        max_retries=1,
    )
    return OpenAIChatModel(llm=llm, version=settings.llm.model, ref=settings.llm.model)


# --- the per-process model server -------------------------------------------------------------


@dataclass
class ServerStatus:
    """What the UI shows about the model being served."""

    version: str
    ref: str
    loaded_at: float
    swaps: int = 0
    checks: int = 0
    registry_failures: int = 0
    load_failures: int = 0
    last_error: str | None = None
    registry_ok: bool = True
    loading: str | None = None
    history: list[str] = field(default_factory=list)


class ModelServer:
    """One chat model per process, replaced atomically when the champion moves.

    `load(ref)` builds a model; `champion()` returns the ref the registry says to serve
    (e.g. "models:/bigbertha-llm/3"), None when there is no champion, and raises when the
    registry is unreachable. Without `champion` the server just serves `fallback_ref`.
    """

    def __init__(
        self,
        load: Callable[[str], ChatModel],
        *,
        fallback_ref: str,
        champion: Callable[[], str | None] | None = None,
        poll_seconds: float = 30.0,
    ) -> None:
        #: Called with each model swapped in (e.g. to mark it serving in telemetry at once).
        self.on_swap: Callable[[ChatModel], None] | None = None
        self._load = load
        self._fallback = fallback_ref
        self._champion = champion
        self._poll = poll_seconds
        self._model: ChatModel | None = None
        self._status: ServerStatus | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelServer:
        if settings.llm.backend == "openai":
            return cls(lambda ref: load_openai(settings), fallback_ref=settings.llm.model)
        champion = None
        if settings.chat.champion_alias:
            champion = _registry_champion(settings, settings.chat.champion_alias)
        return cls(
            lambda ref: load_transformers(ref, settings),
            fallback_ref=settings.llm.model,
            champion=champion,
            poll_seconds=settings.chat.champion_poll_seconds,
        )

    # The model object an answer must hold on to for its whole generation.
    def current(self) -> ChatModel:
        model = self._model
        if model is None:
            raise ModelLoadError("no chat model is loaded yet: call ModelServer.start()")
        return model

    def status(self) -> ServerStatus:
        with self._lock:
            if self._status is None:
                raise ModelLoadError("no chat model is loaded yet")
            return ServerStatus(**vars(self._status))

    def start(self, *, watch: bool = True) -> ModelServer:
        """Load the champion (or the fallback model), then poll in the background if `watch`."""
        wanted, registry_error = self._ask_registry()
        first = wanted or self._fallback
        try:
            model = self._load(first)
        except Exception as exc:
            if first == self._fallback:
                raise _as_load_error(first, exc) from exc
            log.error("chat model %s failed to load (%s); serving %s", first, exc, self._fallback)
            registry_error = f"champion {first} failed to load: {exc}"
            model = self._load_fallback()
        with self._lock:
            self._model = model
            self._status = ServerStatus(
                version=model.version,
                ref=model.ref,
                loaded_at=time.time(),
                checks=1 if self._champion else 0,
                registry_failures=1 if registry_error and wanted is None else 0,
                last_error=registry_error,
                registry_ok=registry_error is None or wanted is not None,
                history=[model.version],
            )
        log.info("serving chat model %s (version %s)", model.ref, model.version)
        if watch and self._champion is not None:
            self._thread = threading.Thread(
                target=self._watch, name="bigbertha-champion-watch", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_now(self) -> bool:
        """One poll of the registry; loads and swaps if the champion moved. True if swapped."""
        wanted, error = self._ask_registry()
        with self._lock:
            assert self._status is not None
            self._status.checks += 1
            self._status.registry_ok = error is None
            if error is not None:
                self._status.registry_failures += 1
                self._status.last_error = error
            current_ref = self._status.ref
        if wanted is None or wanted == current_ref:
            return False
        log.info("champion moved to %s; loading it in the background", wanted)
        with self._lock:
            assert self._status is not None
            self._status.loading = wanted
        try:
            model = self._load(wanted)
        except Exception as exc:
            log.error("champion %s failed to load, keeping %s: %s", wanted, current_ref, exc)
            with self._lock:
                assert self._status is not None
                self._status.loading = None
                self._status.load_failures += 1
                self._status.last_error = f"champion {wanted} failed to load: {exc}"
            return False
        with self._lock:
            assert self._status is not None
            self._model = model  # the swap: new answers get the new model from here on
            self._status.version = model.version
            self._status.ref = model.ref
            self._status.loaded_at = time.time()
            self._status.swaps += 1
            self._status.loading = None
            self._status.last_error = None
            self._status.history.append(model.version)
        log.info("now serving chat model %s (version %s)", model.ref, model.version)
        if self.on_swap is not None:
            try:
                self.on_swap(model)
            except Exception:  # a telemetry hiccup must not undo or fail the swap
                log.exception("on_swap hook failed after swapping to %s", model.ref)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any single bad poll
                log.exception("champion check failed")

    def _ask_registry(self) -> tuple[str | None, str | None]:
        if self._champion is None:
            return None, None
        try:
            return self._champion(), None
        except Exception as exc:
            log.warning("model registry unreachable, keeping the current model: %s", exc)
            return None, f"model registry unreachable: {exc}"

    def _load_fallback(self) -> ChatModel:
        try:
            return self._load(self._fallback)
        except Exception as exc:
            raise _as_load_error(self._fallback, exc) from exc


def _as_load_error(ref: str, exc: Exception) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    return ModelLoadError(f"chat model {ref}: {exc}")


def _registry_champion(settings: Settings, alias: str) -> Callable[[], str | None]:
    """The registry ref the alias points at, e.g. models:/bigbertha-llm/3 (None: no champion)."""

    def champion() -> str | None:
        from bigbertha.models.registry import alias_version

        version = alias_version(settings, alias=alias)
        return None if version is None else f"models:/{settings.mlflow.model_name}/{version}"

    return champion
