"""The chatbot's JSON API, served beside the Streamlit UI in the same process, on its engine.

    GET  /api/status  200 {"ready": true, "model_version", "ref", "swaps", "loading",
                           "registry_ok", "last_error", "history",
                           "canary": {"version", "ref", "share"} | null}
                      503 {"ready": false, "error"} while the model loads or after it failed
                      with sign-on and no Authorization header: {"ready"} only (the probe)
    POST /api/ask     {"question": str, "feedback": "up"|"down"|null, "conversation": str|null}
                      200 what `bigbertha ask --json` prints, with the "conversation" id (a new
                          one when none was sent: send it back for the next turn) and
                          "rated_at" (unix time the vote was stored; null: no vote, or Redis
                          lost it); 503 not ready
                      401 + WWW-Authenticate {"error"}: with sign-on (chat.auth), no valid
                          bearer token (chat/signon.py)
                      400 {"error"} a bad body or question (not UTF-8 or JSON, too deep, not
                          an object, a control character); 413 body or question too large;
                          408 body not received in time; 503 + Retry-After: the answer queue
                          is full; 429 + Retry-After: this client holds its share of it
                          (chat/limits.py; each refusal is counted in
                          bigbertha_chat_refused_total{reason}). A client that hangs up
                          before its answer gives its place back; the answer stops and is
                          never logged as a turn.

The conversation id decides which model answers during a canary (chat/routing.py): every turn
sent with the same id gets the same model, on any replica.

`bigbertha ask --server URL` and the demo ask the running chatbot through it (no model load
per question), the chart's readinessProbe waits on /api/status, and the demo reads the served
version from it to see the hot swap. `EngineSlot` builds the process's one `RagEngine` in the
background at server start; the UI sessions and these routes all get that same engine.

Starlette and anyio are imported inside the server functions: the client half
(`ask_server`) runs in `bigbertha ask`, which must start without them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NotRequired

# pydantic needs typing_extensions' TypedDict before Python 3.12 (its typed-dict-version error)
from typing_extensions import TypedDict

from bigbertha.chat import limits, signon
from bigbertha.core import payloads
from bigbertha.core.errors import (
    BigberthaError,
    Busy,
    ConfigError,
    InputError,
    ServiceUnavailable,
)
from bigbertha.core.settings import Settings

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import BaseRoute

    from bigbertha.chat.rag import Answer, AnswerStream, RagEngine

log = logging.getLogger(__name__)

LOADING = "the chat model is still loading: retry in a few seconds"
CONVERSATION = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ASK_TIMEOUT_SECONDS = 30.0  # chat.ask_timeout_seconds' default


class EngineSlot:
    """The engine this server answers with: built once, in the background, shared by all.

    `get()` blocks until the engine exists (the UI's spinner); `ready()` never blocks (the
    API answers 503 meanwhile). A failed build is kept as `error` and retried by the next
    `get()` (a browser reload), as the UI did before there was an API.
    """

    def __init__(
        self, settings: Settings, build: Callable[[Settings], RagEngine] | None = None
    ) -> None:
        self.settings = settings
        self._build = build
        self._engine: RagEngine | None = None
        self.error: str | None = None

    def get(self) -> RagEngine:
        from bigbertha.chat.rag import shared_engine

        try:
            engine = shared_engine(self.settings, self._build)
        except Exception as exc:
            bug = not isinstance(exc, BigberthaError)
            self.error = f"{type(exc).__name__}: {exc}" if bug else str(exc)
            raise
        self._engine, self.error = engine, None
        return engine

    def ready(self) -> RagEngine | None:
        return self._engine

    def start(self) -> threading.Thread:
        """Build the engine in a background thread; a failure is logged in one line."""

        def build() -> None:
            try:
                self.get()
            except BigberthaError as exc:
                log.error("the chat engine could not be built: %s", exc)
            except Exception:
                log.exception("the chat engine could not be built")

        thread = threading.Thread(target=build, name="bigbertha-engine-build", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()


_SERVING: EngineSlot | None = None


def serving() -> EngineSlot | None:
    """The slot of the server running in this process (None under AppTest or `ask`)."""
    return _SERVING


def lifespan(slot: EngineSlot) -> Callable[[Any], Any]:
    """st.App lifespan: start building the engine as the server starts, stop it at the end."""

    @asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        global _SERVING
        _SERVING = slot
        slot.start()
        try:
            yield
        finally:
            slot.stop()
            _SERVING = None

    return run


def status_body(engine: RagEngine) -> dict[str, Any]:
    s = engine.models.status()
    canary = engine.router.canary()
    return {
        "ready": True,
        "model_version": s.version,
        "ref": s.ref,
        "swaps": s.swaps,
        "loading": s.loading,
        "registry_ok": s.registry_ok,
        "last_error": s.last_error,
        "history": s.history,
        "canary": None if canary is None else asdict(canary),
    }


def parse_ask(body: Any, max_question_chars: int) -> tuple[str, str | None, str | None]:
    """The question, rating and conversation of an /api/ask body; `Refused` names the bad
    field."""
    if not isinstance(body, dict):
        raise limits.Refused('body: must be a JSON object like {"question": "..."}')
    question = body.get("question")
    if not isinstance(question, str):
        raise limits.Refused("question: must be a non-empty string")
    question = limits.check_question(question, max_question_chars)
    feedback = body.get("feedback")
    if feedback not in (None, "up", "down"):
        raise limits.Refused(f"feedback: {feedback!r}: must be 'up', 'down' or null")
    conversation = body.get("conversation")
    if conversation is not None and (
        not isinstance(conversation, str) or not CONVERSATION.fullmatch(conversation)
    ):
        raise limits.Refused(
            "conversation: must be null or the id an earlier answer returned "
            "(1-128 letters, digits, '-', '_', '.' or ':')"
        )
    return question, feedback, conversation


def routes(slot: EngineSlot) -> list[BaseRoute]:
    """/api/status and /api/ask over `slot`'s engine, with the limits of chat/limits.py."""
    import anyio
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bigbertha.telemetry.recorder import Recorder

    chat = slot.settings.chat
    # Admitted answers wait for a generation slot in their own threads (the queue bounds how
    # many), not in the pool Streamlit serves static files from.
    threads = anyio.CapacityLimiter(chat.max_concurrent_answers + chat.max_queued_answers)
    # Refusals are counted even before the engine (and its recorder) exists.
    recorder = Recorder.from_settings(slot.settings)

    def not_ready() -> JSONResponse:
        return JSONResponse({"ready": False, "error": slot.error or LOADING}, status_code=503)

    verifier = signon.BearerVerifier(chat.auth) if chat.auth.enabled else None

    async def signed_in(request: Request) -> str | None:
        """The caller's subject from its bearer token (None: sign-on is off);
        `Unauthenticated` or `ServiceUnavailable` (the provider's keys) otherwise. In a
        thread: the provider's keys may have to be fetched."""
        if verifier is None:
            return None
        header = request.headers.get("authorization")
        return await anyio.to_thread.run_sync(verifier.person_subject, header)

    def refuse(exc: limits.Refused | limits.QueueFull) -> JSONResponse:
        headers = {}
        if isinstance(exc, limits.QueueFull):
            headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, signon.Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        elif exc.status in (408, 413):
            headers["Connection"] = "close"  # the rest of the body is not read
        return JSONResponse(
            {"error": str(exc)},
            status_code=exc.status,
            headers=headers,
            # After the response: a flood of refusals never waits on Redis.
            background=BackgroundTask(recorder.record_refused, exc.reason),
        )

    def unavailable(exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    async def status(request: Request) -> JSONResponse:
        engine = slot.ready()
        # With sign-on, an anonymous caller (the kubelet's readiness probe) learns only
        # whether answers can be served; the model, registry and canary need a token.
        if verifier is not None and "authorization" not in request.headers:
            return JSONResponse({"ready": engine is not None}, status_code=200 if engine else 503)
        try:
            await signed_in(request)
        except signon.Unauthenticated as exc:
            return refuse(exc)
        except ServiceUnavailable as exc:
            return unavailable(exc)
        return not_ready() if engine is None else JSONResponse(status_body(engine))

    async def ask(request: Request) -> JSONResponse:
        try:
            # Before the body: a caller without a token gets nothing read or queued.
            subject = await signed_in(request)
        except signon.Unauthenticated as exc:
            return refuse(exc)
        except ServiceUnavailable as exc:
            return unavailable(exc)
        try:
            raw = await limits.read_body(
                request, chat.max_request_bytes, chat.request_timeout_seconds
            )
            question, feedback, conversation = parse_ask(
                payloads.json_object(raw), chat.max_question_chars
            )
        except limits.Refused as exc:
            return refuse(exc)
        except InputError as exc:  # payloads: not UTF-8, not JSON, too deep, not an object
            return refuse(limits.Refused(str(exc)))
        engine = slot.ready()
        if engine is None:
            return not_ready()
        client = limits.client_of(
            request.client.host if request.client else None,
            request.headers.get("x-forwarded-for"),
            chat.trusted_proxies,
        )
        # The API's person is its token's subject, or without sign-on its client (its address,
        # or the trusted proxy's X-Forwarded-For): a question with a vote counts as both,
        # before any work, so over a limit is a 429 at once.
        person = engine.person(subject or f"client:{client}")
        answer, rated_at = None, None
        try:
            if feedback in ("up", "down"):
                engine.people.admit(person, "vote")
            stream = engine.stream(question, conversation, person)
            with engine.queue.admit(client):
                # A client that hangs up gives its place back at once; its answer stops at
                # the next stage or token in its thread and is never logged (issue 25).
                async with anyio.create_task_group() as group:

                    async def hang_up() -> None:
                        await _disconnected(request)
                        stream.abandon()
                        group.cancel_scope.cancel()

                    group.start_soon(hang_up)
                    answer, rated_at = await anyio.to_thread.run_sync(
                        lambda: _answer(engine, stream, feedback),
                        limiter=threads,
                        abandon_on_cancel=True,
                    )
                    group.cancel_scope.cancel()
        except limits.QueueFull as exc:
            return refuse(exc)
        if answer is None:  # nobody is listening; uvicorn drops it
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        return JSONResponse({**answer.to_dict(), "rated_at": rated_at})

    return [Route("/api/status", status, methods=["GET"]), Route("/api/ask", ask, methods=["POST"])]


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (its body was read already: the
    server's next ASGI message for this request is `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _answer(
    engine: RagEngine, stream: AnswerStream, rating: str | None
) -> tuple[Answer | None, float | None]:
    """`engine.ask` on a stream the event loop may abandon (None when it was), and when its
    vote was stored: a moment after the counter moved, so a scrape timestamped later counted
    it (the demo reconciles its raters' votes with the canary's counts this way)."""
    for _ in stream:
        pass
    answer = stream.answer
    if (
        answer is not None
        and rating in ("up", "down")
        and not answer.error
        and engine.rate(answer, "up" if rating == "up" else "down")
    ):
        return answer, time.time()
    return answer, None


# --- the client half: `bigbertha ask --server URL` --------------------------------------------


def ask_server(
    url: str,
    question: str,
    *,
    rating: str | None = None,
    conversation: str | None = None,
    timeout: float = ASK_TIMEOUT_SECONDS,
    token: str | None = None,
    source_address: str | None = None,
) -> dict[str, Any]:
    """POST the question to a running chatbot's /api/ask; its answer as `Answer.to_dict()`.

    `conversation`: the id of an earlier answer, to ask within that conversation; `token`: the
    bearer token a chatbot with sign-on requires (chat.api_token); `source_address`: the local
    address to connect from (http only; the demo's raters are different people on one machine:
    127.0.0.0/8 is all loopback).
    Unreachable or not ready: ServiceUnavailable; a rejected question: InputError; a missing
    or refused token: ConfigError.
    """
    endpoint = url.rstrip("/") + "/api/ask"
    body = json.dumps(
        {"question": question, "feedback": rating, "conversation": conversation}
    ).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with _opener(source_address)(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        error = _error_of(exc)
        if exc.code in (400, 413):
            raise InputError(error) from None
        if exc.code == 401:
            raise ConfigError(
                f"the chatbot at {url} requires sign-on and refused "
                f"{'the token' if token else 'a request without one'} ({error}): set "
                "chat.api_token (BIGBERTHA_CHAT__API_TOKEN) to a token from its provider"
            ) from None
        if exc.code in (429, 503) and exc.headers.get("Retry-After"):
            raise Busy(f"the chatbot at {url} is {error}") from None
        if exc.code == 503:
            raise ServiceUnavailable(f"the chatbot at {url} is not ready: {error}") from None
        if exc.code == 408:
            raise ServiceUnavailable(
                f"the chatbot at {url} gave up waiting for the question (HTTP 408: {error}): "
                "a slow or interrupted connection; try again"
            ) from None
        hint = ": is --server the URL of `bigbertha chat`?" if exc.code in (404, 405) else ""
        raise ServiceUnavailable(
            f"the chatbot at {url} answered HTTP {exc.code} on /api/ask ({error}){hint}"
        ) from None
    except TimeoutError:  # connecting, or waiting for (the rest of) the answer
        raise ServiceUnavailable(
            f"the chatbot at {url} sent no answer within {timeout:g} s "
            "(--timeout, chat.ask_timeout_seconds)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise ServiceUnavailable(
                f"the chatbot at {url} did not accept a connection within {timeout:g} s "
                "(--timeout, chat.ask_timeout_seconds)"
            ) from None
        raise ServiceUnavailable(
            f"the chatbot at {url} is unreachable ({reason}): start `bigbertha chat` "
            "or fix --server"
        ) from None
    return checked_answer(raw, url)


class _SourceReply(TypedDict):
    n: int
    document: str
    file_name: str
    page: int | None
    section: str | None
    score: float
    snippet: str


class _TimingsReply(TypedDict):
    retrieval: float
    prompt: float
    generation: float
    telemetry: float
    ttft: float | None
    total: float


class _AnswerReply(TypedDict):
    """What /api/ask answers with 200 (`Answer.to_dict()`)."""

    question: str
    answer: str
    sources: list[_SourceReply]
    model_version: str
    turn_id: str
    timings: _TimingsReply
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    warnings: dict[str, str]
    conversation: NotRequired[str | None]
    rated_at: NotRequired[float | None]


def checked_answer(raw: bytes, url: str) -> dict[str, Any]:
    """A 200 body as an answer, or ServiceUnavailable saying why it is not one.

    Not JSON (an HTML error page from a proxy), `{}` or wrong types mean something other than
    `bigbertha chat` answered, or a broken one: transient for the caller (exit 69), not a bug.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        body = json.loads(raw)
    except ValueError:  # also not UTF-8
        start = raw[:60].decode("utf-8", "replace").split("\n")[0]
        raise ServiceUnavailable(
            f"the chatbot at {url} answered 200 with a body that is not JSON ({start!r}...): "
            "is --server the URL of `bigbertha chat`?"
        ) from None
    try:
        TypeAdapter(_AnswerReply).validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ServiceUnavailable(
            f"the chatbot at {url} answered 200 with a body that is not an answer: "
            f"{where}: {first['msg']} ({exc.error_count()} problem(s))"
        ) from None
    answer: dict[str, Any] = body
    return answer


def _opener(source_address: str | None) -> Callable[..., Any]:
    """urlopen, or one whose HTTP connections leave from `source_address`."""
    if not source_address:
        return urllib.request.urlopen
    import functools
    import http.client

    local = (source_address, 0)

    class FromAddress(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            connect = functools.partial(http.client.HTTPConnection, source_address=local)
            return self.do_open(connect, req)

    return urllib.request.build_opener(FromAddress).open


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"])
    except Exception:
        return exc.reason or f"HTTP {exc.code}"
