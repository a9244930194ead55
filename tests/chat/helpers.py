"""What the chat tests (and tests/browser, bench/chat.py) share: the handbook they ingest and
ask about, SmolLM2 loaded once, a RAG engine over real services, a telemetry counter, and a
stub engine (canned model and retriever) for the API and UI tests."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from bigbertha.chat.llm import GenerationError, Message, TransformersChatModel, load_transformers
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.rag import RagEngine
from bigbertha.core.settings import Settings
from bigbertha.documents.retrieval import Chunk, Retriever
from bigbertha.telemetry.feedback import FeedbackLog
from bigbertha.telemetry.recorder import METRICS_KEY, Recorder, field

HANDBOOK = """# The BigBertha Handbook

## Refunds

Customers can request a refund within 45 days of purchase. Refunds are paid to the original
payment method within 5 business days.

## Office

The BigBertha office mascot is a purple walrus named Gloria, who lives in the lobby aquarium.
"""
MASCOT = "What is the name of the office mascot?"


def chunk(text: str, score: float, **meta: Any) -> Chunk:
    return Chunk(text=text, score=score, source="s3://docs/a.pdf", file_name="a.pdf", **meta)


@functools.cache
def smollm2_chat_model() -> TransformersChatModel:
    """SmolLM2 loaded once per test session."""
    return load_transformers("smollm2", Settings())


def engine_for(settings: Settings, server: ModelServer | None = None) -> RagEngine:
    if server is None:
        server = ModelServer(lambda ref: smollm2_chat_model(), fallback_ref="smollm2").start()
    return RagEngine(
        settings,
        retriever=Retriever(settings),
        models=server,
        recorder=Recorder.from_settings(settings),
        feedback=FeedbackLog.from_settings(settings),
    )


def metric(settings: Settings, name: str, *labels: str) -> float:
    client = FeedbackLog.from_settings(settings).client
    value = client.hget(METRICS_KEY, field(name, settings.mlflow.model_name, *labels))
    return float(value or 0)


class Tokens:
    """A canned token stream (or one that fails at once)."""

    def __init__(self, parts: list[str], fail: bool) -> None:
        self.parts, self.fail = parts, fail
        self.prompt_tokens, self.completion_tokens = 12, len(parts)

    def __iter__(self) -> Iterator[str]:
        if self.fail:
            raise GenerationError("LLM endpoint unreachable")
        yield from self.parts

    def close(self) -> None:
        pass


class StubModel:
    """A chat model that says who the mascot is, citing [1] (or fails, for `version='broken'`)."""

    def __init__(self, version: str) -> None:
        self.ref = self.version = version

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Tokens:
        return Tokens(["The mascot is ", "Gloria [1]."], fail=self.version == "broken")


class StubRetriever:
    def retrieve(self, question: str) -> list[Any]:
        return [chunk("The office mascot is a purple walrus named Gloria.", 0.8, section="Office")]


def stub_engine(settings: Settings, model: type[StubModel] = StubModel) -> RagEngine:
    """A RAG engine on the stubs and the real Redis telemetry and feedback log."""
    return RagEngine(
        settings,
        retriever=StubRetriever(),  # type: ignore[arg-type]
        models=ModelServer(model, fallback_ref=settings.llm.model).start(),
        recorder=Recorder.from_settings(settings),
        feedback=FeedbackLog.from_settings(settings),
    )
