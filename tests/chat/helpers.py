"""What the chat tests (and tests/browser, bench/chat.py) share: the handbook they ingest and
ask about, SmolLM2 loaded once, a RAG engine over real services, a telemetry counter, a
stub engine (canned model and retriever) for the API and UI tests, the API's test client, and a
router serving a canary of stubs."""

from __future__ import annotations

import functools
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

from bigbertha.chat import api as chat_api
from bigbertha.chat.llm import GenerationError, Message, TransformersChatModel, load_transformers
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.rag import RagEngine
from bigbertha.chat.routing import ModelRouter
from bigbertha.core.settings import Settings
from bigbertha.documents.retrieval import Chunk, Retriever
from bigbertha.telemetry.feedback import FeedbackLog
from bigbertha.telemetry.recorder import METRICS_KEY, Recorder, field
from tests.services import Service

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


def client_for(slot: chat_api.EngineSlot) -> Any:
    """Starlette's test client on the chatbot API's routes over `slot`."""
    from starlette.applications import Starlette

    with warnings.catch_warnings():  # "install httpx2": not needed for these in-process calls
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient
    return TestClient(Starlette(routes=chat_api.routes(slot)))


# --- a canary of stubs --------------------------------------------------------------------------


class Alias:
    """A registry alias the servers poll: a ref, None when unset, or down."""

    def __init__(self, ref: str | None) -> None:
        self.ref = ref
        self.down = False

    def __call__(self) -> str | None:
        if self.down:
            raise ConnectionError("MLflow unreachable")
        return self.ref


def stub(ref: str) -> StubModel:
    """A stub model for a registry ref, its version the ref's last part (models:/m/2 -> 2)."""
    model = StubModel(ref.rsplit("/", 1)[-1])
    model.ref = ref
    return model


def router_for(share: float, challenger: str | None = "models:/m/2") -> tuple[ModelRouter, Alias]:
    """A started router: champion models:/m/1, `challenger` on a canary of `share`."""
    alias = Alias(challenger)
    champion = ModelServer(stub, fallback_ref="base", champion=Alias("models:/m/1"))
    candidate = ModelServer(stub, fallback_ref=None, champion=alias)
    return ModelRouter(champion, candidate, share).start(watch=False), alias


def canary_engine(settings: Settings) -> RagEngine:
    """An engine of stubs during a canary: champion 1, challenger 2 on half the conversations."""
    router, _ = router_for(0.5)
    return RagEngine(
        settings,
        retriever=StubRetriever(),  # type: ignore[arg-type]
        models=router.champion,
        recorder=Recorder.from_settings(settings),
        feedback=FeedbackLog.from_settings(settings),
        router=router,
    )


def settings_for(redis: Service, model: str = "stub-1", **chat: Any) -> Settings:
    # A collection name of its own: rag.shared_engine keeps one engine per distinct settings.
    return Settings(
        redis={"url": redis.extra["url"], "timeout_seconds": 0.5},
        milvus={"collection": f"api_{uuid.uuid4().hex[:8]}"},
        llm={"model": model},
        chat={"champion_alias": "", **chat},
    )


def refused(settings: Settings, reason: str) -> float:
    client = FeedbackLog.from_settings(settings).client
    return float(client.hget(METRICS_KEY, field("bigbertha_chat_refused_total", reason)) or 0)


def wait_for_count(read: Callable[[], float], expected: float, timeout: float = 10) -> float:
    """Refusals are written after the response (a background task): poll for them."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def id_token(issuer: str, sub: str, client_id: str = "bigbertha-chat") -> str:
    """An ID token for `sub` from the real provider at `issuer`, through the authorization-code
    flow a browser goes through (its sign-in form posted by hand)."""
    import httpx

    redirect = "http://127.0.0.1:8501/oauth2callback"
    signed = httpx.post(
        f"{issuer}/oauth2/authorize",
        params={
            "client_id": client_id,
            "redirect_uri": redirect,
            "response_type": "code",
            "scope": "openid",
            "state": "s",
        },
        data={"sub": sub},
    )
    code = parse_qs(urlparse(signed.headers["location"]).query)["code"][0]
    tokens = httpx.post(
        f"{issuer}/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": client_id,
            "client_secret": "client-secret",
        },
    )
    tokens.raise_for_status()
    return str(tokens.json()["id_token"])
