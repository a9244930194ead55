"""What the chat tests (and tests/browser, bench/chat.py) share: the handbook they ingest and
ask about, SmolLM2 loaded once, a RAG engine over real services, and a telemetry counter."""

from __future__ import annotations

import functools
from typing import Any

from bigbertha.chat.llm import TransformersChatModel, load_transformers
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
