"""Bounds on what one client can make the chatbot do: question, body, queue, connection time.

- `check_question`: a question is text of at most `chat.max_question_chars` characters, with
  no control characters but tab and newlines and no unpaired surrogates (the UI, the API and
  `bigbertha ask` all pass through it, before anything is retrieved, generated or logged);
- `read_body`: the API reads at most `chat.max_request_bytes` of a request body, and all of it
  within `chat.request_timeout_seconds` (413 and 408 otherwise, and the connection is closed);
- `AnswerQueue`: at most `chat.max_concurrent_answers` answers generate at once and
  `chat.max_queued_answers` wait; beyond that a question is refused at once with
  `QueueFull` (503 + Retry-After on the API) instead of waiting without end; one API client
  (`client_of`: its address, or X-Forwarded-For behind `chat.trusted_proxies` proxies) holds
  at most `chat.max_answers_per_client` of those places (`ClientBusy`, 429 + Retry-After);
- `install_server_limits`: Streamlit's uvicorn has a keep-alive timeout but none for a
  request head that never completes (Kludex/uvicorn#157), and Streamlit exposes no setting for
  its uvicorn config, so a connection that has not sent a complete request head within
  `chat.request_timeout_seconds` is closed by a protocol subclass installed here.

Each refusal raises a `Refused` error carrying its HTTP status and the reason label of
`bigbertha_chat_refused_total`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from bigbertha.core.errors import Busy, InputError

if TYPE_CHECKING:
    from starlette.requests import Request

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

ALLOWED_CONTROLS = frozenset("\t\n\r")


class Refused(InputError):
    """A request refused before any work: its HTTP status and `refused_total` reason."""

    status = 400
    reason = "invalid"


class TooLarge(Refused):
    status = 413
    reason = "too_large"


class TooSlow(Refused):
    status = 408
    reason = "timeout"


class QueueFull(Busy):
    """Every answer slot is taken and the queue is full: try again after `retry_after` s."""

    status = 503
    reason = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientBusy(QueueFull):
    """This client already holds its share of the queue: the others still get places."""

    status = 429


def client_of(peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """Who is asking: the connection's address, or behind `trusted_proxies` reverse proxies
    the address the outermost of them saw (X-Forwarded-For's entry that many from the right:
    werkzeug's ProxyFix rule; entries further left are the client's to forge)."""
    if trusted_proxies and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if len(hops) >= trusted_proxies:
            return hops[-trusted_proxies]
    return peer or "unknown"


def check_question(question: str, max_chars: int) -> str:
    """The question stripped; `Refused` naming the problem (`TooLarge` for its length)."""
    question = question.strip()
    if not question:
        raise Refused("question: must be a non-empty string")
    if len(question) > max_chars:
        raise TooLarge(
            f"question: {len(question)} characters; at most {max_chars} (chat.max_question_chars)"
        )
    for position, char in enumerate(question):
        if unicodedata.category(char) == "Cs":
            raise Refused(f"question: unpaired surrogate U+{ord(char):04X} at {position}")
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROLS:
            raise Refused(f"question: control character U+{ord(char):04X} at {position}")
    return question


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The request body: `TooLarge` past `max_bytes`, `TooSlow` if not all in within `timeout`."""
    import anyio

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"body: {declared} bytes; at most {max_bytes} (chat.max_request_bytes)")
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"body: more than {max_bytes} bytes (chat.max_request_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise TooSlow(
            f"body: not received within {timeout:g} s (chat.request_timeout_seconds)"
        ) from None
    return b"".join(chunks)


class AnswerQueue:
    """Admission to answering: at most `slots + depth` answers in progress or waiting.

    Thread-safe; shared by the API and the UI sessions of one engine. `admit()` is a context
    manager held for a whole answer; when full it raises `QueueFull` with a Retry-After
    estimated from recent answer times.
    """

    def __init__(self, slots: int, depth: int, per_client: int | None = None) -> None:
        self.slots = slots
        self.depth = depth
        self.capacity = slots + depth
        self.per_client = per_client or self.capacity
        self.active = 0
        self.refused = 0
        self.by_client: dict[str, int] = {}
        self._seconds = 5.0  # moving average of an answer's time in the queue (a first guess)
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, client: str | None = None) -> Iterator[None]:
        """Hold a place for one answer; `client` (an API caller) is held to its share."""
        with self._lock:
            if self.active >= self.capacity:
                self.refused += 1
                raise QueueFull(
                    f"busy: {self.active} questions are being answered or waiting "
                    f"(chat.max_concurrent_answers={self.slots}, "
                    f"chat.max_queued_answers={self.depth}); retry in {self.retry_after()} s",
                    self.retry_after(),
                )
            held = self.by_client.get(client, 0) if client is not None else 0
            if client is not None and held >= self.per_client:
                self.refused += 1
                raise ClientBusy(
                    f"busy: {held} of your questions are being answered or waiting "
                    f"(chat.max_answers_per_client={self.per_client}); retry in "
                    f"{self.retry_after()} s",
                    self.retry_after(),
                )
            self.active += 1
            if client is not None:
                self.by_client[client] = held + 1
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self.active -= 1
                self._seconds = 0.8 * self._seconds + 0.2 * elapsed
                if client is not None:
                    left = self.by_client.pop(client) - 1
                    if left:
                        self.by_client[client] = left

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: with `active` answers each in
        the queue for `_seconds` on average, one leaves every `_seconds / active` (Little's
        law). Clamped to 1..60 s."""
        return max(1, min(60, math.ceil(self._seconds / max(1, self.active))))


# --- slow clients: a deadline on the request head ----------------------------------------------


class _HeadDeadline:
    """Mixin for uvicorn's HTTP protocol: close a connection whose request head is not complete
    within `head_timeout` seconds of it opening or of its previous response.

    A connection whose request is being served is never closed here (its body has the API's
    own deadline), nor one handed to the WebSocket protocol (Streamlit's session stream).
    """

    head_timeout: ClassVar[float] = 30.0
    _head_timer: asyncio.TimerHandle | None = None
    # Provided by uvicorn's protocol classes.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed already, or upgraded to a WebSocket
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served
        log.info("closing a connection with no complete request after %gs", self.head_timeout)
        self.transport.close()


def protocol_class(head_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's own HTTP protocol (h11 or httptools) with the request head deadline."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type(
        "BoundedHTTPProtocol",
        (_HeadDeadline, AutoHTTPProtocol),
        {"head_timeout": head_timeout},
    )


def install_server_limits(settings: Settings) -> dict[str, Any]:
    """Bound Streamlit's server: head deadline (uvicorn), WebSocket message and upload sizes.

    Streamlit 1.67 builds uvicorn's Config from `starlette_server._get_uvicorn_config_kwargs`
    (UvicornRunner.run); there is no setting for it, so that function is wrapped to add our
    protocol class. Returns the Streamlit config options to pass to `App.run`.
    """
    from streamlit.web.server.starlette import starlette_server

    chat = settings.chat
    base = starlette_server._get_uvicorn_config_kwargs
    if not getattr(base, "bigbertha", False):

        def kwargs() -> dict[str, Any]:
            return {**base(), "http": protocol_class(chat.request_timeout_seconds)}

        kwargs.bigbertha = True  # type: ignore[attr-defined]
        starlette_server._get_uvicorn_config_kwargs = kwargs
    mebibyte = 1024 * 1024
    return {
        # A chat message carries one question: the body limit, rounded up to Streamlit's unit.
        "server.maxMessageSize": max(1, math.ceil(chat.max_request_bytes / mebibyte)),
        "server.maxUploadSize": 1,  # the UI has no file uploader
    }
