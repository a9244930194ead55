"""Chat model backends: what answers a list of messages, token by token.

Two backends, chosen by `llm.backend`:
- `transformers`: the model runs in this process, loaded by
  `bigbertha.models.loading.load_causal_lm` (the offline SmolLM2, a path, a Hugging Face id or
  an MLflow registry model);
- `openai`: any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server) through LlamaIndex's
  `OpenAILike`; in production the chart's inference tier, where a registry version is a LoRA
  adapter asked for by its served name (`load_openai`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bigbertha.core.errors import BigberthaError, ConfigError, ServiceUnavailable
from bigbertha.core.settings import Settings
from bigbertha.models.prompts import Message

log = logging.getLogger(__name__)
_REGISTRY_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ModelLoadError(ConfigError):
    """No chat model could be loaded: the message names the model and the reason."""


class GenerationError(ServiceUnavailable):
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


def load_openai(settings: Settings, ref: str | None = None) -> OpenAIChatModel:
    """An OpenAILike client for `llm.api_base` answering as `ref`.

    `ref` is `llm.model` (the default: the endpoint's own model) or a registry version,
    ``models:/<name>/<version>``. A version is asked for by its served name
    (`models.registry.served_name`, e.g. ``bigbertha-llm-v7``: the inference tier's adapter, or
    its base after a roll onto a merged champion) and is labelled with its version number, as the
    in-process backend labels it; it loads only once the endpoint lists that name in
    GET /v1/models, so a caller that switches on success never asks for a model the tier lacks.
    """
    from llama_index.llms.openai_like import OpenAILike

    if not settings.llm.api_base:
        raise ModelLoadError(
            "llm.backend is 'openai' but llm.api_base is not set: "
            "set BIGBERTHA_LLM__API_BASE to the endpoint, e.g. http://vllm:8000/v1"
        )
    ref = ref or settings.llm.model
    model, version = ref, ref
    match = _REGISTRY_VERSION.match(ref)
    if match:
        from bigbertha.models.registry import served_name

        model, version = served_name(match["name"], match["version"]), match["version"]
    elif ref.startswith("models:/"):
        raise ModelLoadError(f"chat model {ref}: pin a registry version (models:/<name>/<n>)")
    api_key = settings.llm.api_key.get_secret_value() if settings.llm.api_key else "unused"
    if match:
        _require_listed(settings.llm.api_base, api_key, model, ref)
    llm = OpenAILike(
        model=model,
        api_base=settings.llm.api_base,
        api_key=api_key,
        is_chat_model=True,
        max_tokens=settings.llm.max_new_tokens,
        temperature=settings.llm.temperature,
        timeout=60.0,
        max_retries=1,
        # vLLM (and the OpenAI API) end the stream with the true token counts.
        additional_kwargs={"stream_options": {"include_usage": True}},
    )
    return OpenAIChatModel(llm=llm, version=version, ref=ref)


def _require_listed(api_base: str, api_key: str, model: str, ref: str) -> None:
    """ModelLoadError unless the endpoint's GET /v1/models lists `model`."""
    import openai

    client = openai.OpenAI(base_url=api_base, api_key=api_key, timeout=10.0, max_retries=0)
    try:
        served = {m.id for m in client.models.list()}
    except openai.OpenAIError as exc:
        raise ModelLoadError(f"chat model {ref}: LLM endpoint {api_base}: {exc}") from exc
    finally:
        client.close()
    if model not in served:
        raise ModelLoadError(
            f"chat model {ref}: {api_base} does not serve {model} yet (it serves "
            f"{', '.join(sorted(served)) or 'nothing'}); the tier's sidecar loads it within a poll"
        )
