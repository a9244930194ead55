"""The chatbot's JSON API (chat_api.py): /api/status and /api/ask over the engine the UI uses,
through Starlette's TestClient with a stub model and retriever on a real Redis; `bigbertha ask
--server` against a real `bigbertha chat` process; and the client's errors with no server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import typing
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.chat import api as chat_api
from bigbertha.chat.llm import Message, ModelLoadError
from bigbertha.chat.rag import Answer, RagEngine, render
from bigbertha.core.errors import ServiceUnavailable
from bigbertha.core.settings import Settings
from bigbertha.local.tiny_llama import tiny_llama
from tests.chat.helpers import (
    HANDBOOK,
    MASCOT,
    StubModel,
    Tokens,
    client_for,
    metric,
    refused,
    settings_for,
    stub_engine,
    wait_for_count,
)
from tests.services import Service, free_port, pid_alive

BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")


def test_status_and_ask_are_503_until_the_engine_is_built(redis_server: Service) -> None:
    release = threading.Event()

    def slow_build(settings: Settings) -> RagEngine:
        assert release.wait(10)
        return stub_engine(settings)

    slot = chat_api.EngineSlot(settings_for(redis_server), slow_build)
    building = slot.start()
    client = client_for(slot)
    status = client.get("/api/status")
    assert status.status_code == 503
    assert status.json() == {"ready": False, "error": chat_api.LOADING}
    assert client.post("/api/ask", json={"question": MASCOT}).status_code == 503

    release.set()
    building.join(10)
    status = client.get("/api/status")
    assert status.status_code == 200
    assert status.json() == {
        "ready": True,
        "model_version": "stub-1",
        "ref": "stub-1",
        "swaps": 0,
        "loading": None,
        "registry_ok": True,
        "last_error": None,
        "history": ["stub-1"],
        "canary": None,
    }


def test_a_failed_build_is_reported_by_status(
    redis_server: Service, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(settings: Settings) -> RagEngine:
        raise ModelLoadError("chat model /models/missing: no such directory")

    slot = chat_api.EngineSlot(settings_for(redis_server), broken)
    slot.start().join(10)
    status = client_for(slot).get("/api/status")
    assert status.status_code == 503
    assert status.json() == {
        "ready": False,
        "error": "chat model /models/missing: no such directory",
    }
    failures = [r for r in caplog.records if "could not be built" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None  # one line, no traceback


def test_ask_answers_with_sources_and_counts_the_rating(redis_server: Service) -> None:
    settings = settings_for(redis_server)
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    client = client_for(slot)
    downs = metric(settings, "bigbertha_feedback_total", "stub-1", "down")
    answered = metric(settings, "bigbertha_chat_requests_total", "stub-1")

    asked = time.time()
    response = client.post("/api/ask", json={"question": MASCOT, "feedback": "down"})
    assert response.status_code == 200
    doc = response.json()
    # When the vote was stored: after the counter moved, before the reply (the demo checks
    # the canary's counts against its raters' votes with it).
    assert asked <= doc.pop("rated_at") <= time.time()
    assert doc["answer"] == "The mascot is Gloria [1]." and doc["model_version"] == "stub-1"
    assert doc["sources"][0]["label"] == "a.pdf, section Office"
    assert doc["sources"][0]["score"] == 0.8 and doc["error"] is None
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 1
    assert metric(settings, "bigbertha_chat_requests_total", "stub-1") == answered + 1
    rated = slot.get().feedback.read(limit=1)[0]
    assert rated["turn_id"] == doc["turn_id"] and rated["rating"] == "down"

    # What `bigbertha ask --server` prints is what a local `bigbertha ask` would.
    answer = Answer.from_dict(doc)
    assert answer.to_dict() == doc
    assert "[1] a.pdf, section Office  (score 0.800)" in render(answer)

    # Without feedback nothing is rated.
    unrated = client.post("/api/ask", json={"question": MASCOT})
    assert unrated.status_code == 200 and unrated.json()["rated_at"] is None
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 1


def test_a_failed_answer_is_not_rated(redis_server: Service) -> None:
    settings = settings_for(redis_server, model="broken")
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    ups = metric(settings, "bigbertha_feedback_total", "broken", "up")
    doc = client_for(slot).post("/api/ask", json={"question": MASCOT, "feedback": "up"}).json()
    assert "LLM endpoint unreachable" in doc["error"] and doc["rated_at"] is None
    assert metric(settings, "bigbertha_feedback_total", "broken", "up") == ups


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "body: not valid JSON"),
        (b'["q"]', "body: must be a JSON object"),
        (b"{}", "question: must be a non-empty string"),
        (b'{"question": "   "}', "question: must be a non-empty string"),
        (b'{"question": 3}', "question: must be a non-empty string"),
        (b'{"question": "q", "feedback": "meh"}', "feedback: 'meh': must be 'up', 'down' or null"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    redis_server: Service, body: bytes, error: str
) -> None:
    slot = chat_api.EngineSlot(settings_for(redis_server))  # never built: 400 comes first
    response = client_for(slot).post("/api/ask", content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "status", "error", "reason"),
    [
        (b'{"question": "caf\xe9"}', 400, "body: not valid UTF-8 (byte 0xe9 at", "invalid"),
        (b'{"question": "lone \\ud800"}', 400, "body: contains an unpaired surrogate", "invalid"),
        (DEEP, 400, "body: JSON nested 100000 deep; at most 32", "invalid"),
        (b"[1,2]", 400, "body: must be a JSON object, not list", "invalid"),
        (b"null", 400, "body: must be a JSON object, not NoneType", "invalid"),
        (b'{"question": "what\\u0000now"}', 400, "question: control character U+0000", "invalid"),
        (
            json.dumps({"question": "x" * 4001}).encode(),
            413,
            "question: 4001 characters; at most 4000 (chat.max_question_chars)",
            "too_large",
        ),
        (
            json.dumps({"question": "x" * 300_000}).encode(),
            413,
            "body: 300016 bytes; at most 262144 (chat.max_request_bytes)",
            "too_large",
        ),
    ],
    ids=["not UTF-8", "lone surrogate", "nested", "array", "null", "NUL", "long question", "big"],
)
def test_hostile_bodies_are_refused_in_one_line_and_counted(
    redis_server: Service,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    status: int,
    error: str,
    reason: str,
) -> None:
    # A body limit above the 200 KB of the 100,000-deep body: the nesting limit refuses it.
    settings = settings_for(redis_server, max_request_bytes=262_144)
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    before = refused(settings, reason)
    logged = len(slot.get().feedback.read())
    answered = metric(settings, "bigbertha_chat_requests_total", "stub-1")
    response = client_for(slot).post("/api/ask", content=body)
    assert response.status_code == status
    message = response.json()["error"]
    assert message.startswith(error) and "\n" not in message and len(message) < 300
    assert wait_for_count(lambda: refused(settings, reason), before + 1) == before + 1
    # Nothing reached the engine: no answer counted, no feedback logged, no false outage.
    assert metric(settings, "bigbertha_chat_requests_total", "stub-1") == answered
    assert len(slot.get().feedback.read()) == logged
    assert "unreachable" not in caplog.text


def test_a_chunked_body_past_the_limit_is_413(redis_server: Service) -> None:
    settings = settings_for(redis_server)
    slot = chat_api.EngineSlot(settings, stub_engine)
    chunks = (b'{"question": "' + b"x" * 10_000 for _ in range(10))  # no Content-Length
    response = client_for(slot).post("/api/ask", content=chunks)
    assert response.status_code == 413
    assert response.json()["error"] == "body: more than 65536 bytes (chat.max_request_bytes)"


# --- real HTTP: uvicorn with the chat's limits, a model held until the test releases it ---------


class GatedModel(StubModel):
    """Answers only once `gate` is set: the queue fills deterministically."""

    gate = threading.Event()

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Tokens:
        assert self.gate.wait(60)
        return super().stream(messages, max_new_tokens=max_new_tokens, temperature=temperature)


@pytest.fixture
def gated_server(redis_server: Service) -> Iterator[dict[str, Any]]:
    """The API on uvicorn (over a socket) with 2 answer slots, 8 queued, a 2 s request deadline."""
    GatedModel.gate.clear()
    settings = settings_for(
        redis_server,
        max_concurrent_answers=2,
        max_queued_answers=8,
        max_answers_per_client=10,  # every test client is 127.0.0.1
        request_timeout_seconds=2,
    )
    try:
        yield from _api_server(settings, GatedModel)
    finally:
        GatedModel.gate.set()


def _api_server(settings: Settings, model: type[StubModel]) -> Iterator[dict[str, Any]]:
    import uvicorn
    from starlette.applications import Starlette

    from bigbertha.chat import limits

    slot = chat_api.EngineSlot(settings, functools.partial(stub_engine, model=model))
    slot.start().join(10)
    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=chat_api.routes(slot)),
        host="127.0.0.1",
        port=port,
        http=limits.protocol_class(settings.chat.request_timeout_seconds),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "slot": slot, "settings": settings}
    finally:
        server.should_exit = True
        thread.join(10)


class SlowModel(StubModel):
    """Streams 50 tokens, 0.1 s apart (5 s an answer), counting the tokens it produced."""

    produced = 0

    def stream(
        self, messages: Sequence[Message], *, max_new_tokens: int, temperature: float
    ) -> Tokens:
        model = self

        class Slow(Tokens):
            def __iter__(self) -> Iterator[str]:
                for n in range(50):
                    time.sleep(0.1)
                    type(model).produced += 1
                    yield f"token{n} "

        return Slow([], fail=False)


@pytest.fixture
def slow_server(redis_server: Service) -> Iterator[dict[str, Any]]:
    settings = settings_for(
        redis_server, max_concurrent_answers=2, max_queued_answers=8, max_answers_per_client=3
    )
    yield from _api_server(settings, SlowModel)


def _hang_up_after(port: int, source: str, question: str, seconds: float) -> None:
    """A real client from address `source` that sends a question and closes after `seconds`."""
    body = json.dumps({"question": question}).encode()
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as conn:
        conn.sendall(
            b"POST /api/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(seconds)


def test_clients_that_hang_up_give_their_places_back_and_are_never_logged(
    slow_server: dict[str, Any],
) -> None:
    """Issue 25 item 1: ten clients hang up after 0.3 s; before, they held all 10 places (a
    real user got 503) and their answers were generated for nobody and logged as turns."""
    url, port, slot = slow_server["url"], slow_server["port"], slow_server["slot"]
    engine = slot.get()
    SlowModel.produced = 0
    tag = uuid.uuid4().hex[:8]
    hostile = [
        threading.Thread(
            target=_hang_up_after, args=(port, f"127.0.0.{10 + n}", f"h{tag} {n}", 0.3)
        )
        for n in range(10)
    ]
    for thread in hostile:
        thread.start()
    for thread in hostile:
        thread.join()
    deadline = time.monotonic() + 2
    while engine.queue.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.queue.active == 0  # every place given back within moments of the hang-up
    status, body, _, seconds = _post(url, json.dumps({"question": f"user {tag}"}).encode())
    assert status == 200 and body["answer"].startswith("token0") and seconds < 8
    logged = [turn["question"] for turn in engine.feedback.read(limit=100)]
    assert f"user {tag}" in logged
    assert not [q for q in logged if q.startswith(f"h{tag}")]
    # Two answers had started generating: each stopped at its next token (0.1 s apart).
    assert SlowModel.produced - 50 < 10, SlowModel.produced


def test_one_client_cannot_hold_every_place(slow_server: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, slot = slow_server["url"], slow_server["slot"]
    body = json.dumps({"question": MASCOT}).encode()
    with ThreadPoolExecutor(6) as pool:
        greedy = [pool.submit(_post, url, body) for _ in range(5)]  # all from 127.0.0.1
        deadline = time.monotonic() + 5
        while sum(f.done() for f in greedy) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused_at_once = [f.result() for f in greedy if f.done()]
        assert [r[0] for r in refused_at_once] == [429, 429]
        assert refused_at_once[0][1]["error"].startswith("busy: 3 of your questions")
        assert slot.get().queue.by_client == {"127.0.0.1": 3}
        assert slot.get().queue.active < slot.get().queue.capacity  # others still get in
        assert sorted(f.result()[0] for f in greedy) == [200, 200, 200, 429, 429]


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        ("10.0.0.5", "6.6.6.6", 0, "10.0.0.5"),  # no trusted proxy: the header is anyone's
        ("10.0.0.5", "6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),  # the proxy's view, not forged
        ("10.0.0.5", "203.0.113.7, 10.0.0.9", 2, "203.0.113.7"),
        ("10.0.0.5", "203.0.113.7", 2, "10.0.0.5"),  # fewer hops than proxies: the peer
        (None, None, 0, "unknown"),
    ],
)
def test_the_client_is_its_address_or_what_trusted_proxies_saw(
    peer: str | None, forwarded: str | None, proxies: int, client: str
) -> None:
    from bigbertha.chat import limits

    assert limits.client_of(peer, forwarded, proxies) == client


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any], Any, float]:
    """(status, JSON body, headers, seconds) of one POST to /api/ask."""
    request = urllib.request.Request(
        url + "/api/ask", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            doc = json.load(response)
            return response.status, doc, response.headers, time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), exc.headers, time.perf_counter() - started


def test_fifty_concurrent_questions_refuse_the_excess_and_serve_the_rest(
    gated_server: dict[str, Any],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, slot, settings = gated_server["url"], gated_server["slot"], gated_server["settings"]
    queue = slot.get().queue
    busy_before = refused(settings, "busy")
    answered_before = metric(settings, "bigbertha_chat_requests_total", "stub-1")
    bodies = [json.dumps({"question": f"{MASCOT} ({n})"}).encode() for n in range(50)]
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(_post, url, body) for body in bodies]
        # The model is held: 10 questions get in (2 generating, 8 waiting), 40 are refused
        # while those 10 are still pending.
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        done = [f.result() for f in futures if f.done()]
        assert len(done) == 40 and queue.active == 10
        GatedModel.gate.set()
        results = [f.result() for f in futures]

    served = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] != 200]
    assert len(served) == 10 and len(shed) == 40
    assert {r[1]["answer"] for r in served} == {"The mascot is Gloria [1]."}
    for status, body, headers, _ in shed:
        assert status == 503 and body["error"].startswith("busy: 10 questions")
        assert 1 <= int(headers["Retry-After"]) <= 60
    assert all(r[0] == 503 for r in done)  # refused at once, not after the held answers
    assert wait_for_count(lambda: refused(settings, "busy"), busy_before + 40) == busy_before + 40
    assert metric(settings, "bigbertha_chat_requests_total", "stub-1") == answered_before + 10
    assert queue.active == 0


def test_busy_is_exit_75_for_bigbertha_ask_server(gated_server: dict[str, Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bigbertha.core.errors import Busy

    url, queue = gated_server["url"], gated_server["slot"].get().queue
    body = json.dumps({"question": MASCOT}).encode()
    with ThreadPoolExecutor(10) as pool:
        held = [pool.submit(_post, url, body) for _ in range(10)]
        deadline = time.monotonic() + 10
        while queue.active < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(Busy, match=f"the chatbot at {url} is busy: 10 questions"):
            chat_api.ask_server(url, MASCOT)
        GatedModel.gate.set()
        assert [f.result()[0] for f in held] == [200] * 10


def _raw(port: int, data: bytes, wait: float) -> bytes:
    """Send `data` on a raw connection, then read until the server closes it (or `wait`)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received + b"<still open>"
    return received


def test_slow_clients_are_cut_off(gated_server: dict[str, Any]) -> None:
    port, settings = gated_server["port"], gated_server["settings"]
    before = refused(settings, "timeout")
    # A request head that never completes: the connection is closed after the deadline (2 s).
    assert _raw(port, b"POST /api/ask HTTP/1.1\r\nHost: x\r\n", wait=10) == b""
    # An idle connection that never sends a byte: the same.
    assert _raw(port, b"", wait=10) == b""
    # A body announced but never sent: 408 with the reason, then the connection is closed.
    head = b"POST /api/ask HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    reply = _raw(port, head, wait=10)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"connection: close" in reply.lower()
    assert b"body: not received within 2 s (chat.request_timeout_seconds)" in reply
    assert wait_for_count(lambda: refused(settings, "timeout"), before + 1) == before + 1


def test_ask_server_down_is_one_line_and_exit_69(clean_env: Path) -> None:
    from bigbertha.cli import app

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["ask", "q", "--json", "--server", url])
    assert result.exit_code == 69
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the chatbot at {url} is unreachable")

    both = CliRunner().invoke(app, ["ask", "q", "--server", url, "--top-k", "3"])
    assert both.exit_code == 2 and "--top-k" in both.output


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A chatbot stand-in: each path is one way of answering wrongly."""

    replies: typing.ClassVar[dict[str, tuple[int, bytes]]] = {
        "/html": (200, b"<html><body>502 Bad Gateway</body></html>"),
        "/empty": (200, b"{}"),
        "/types": (200, json.dumps({"question": "q", "answer": 5}).encode()),
        "/timeout": (408, b'{"error": "body: not received within 30 s"}'),
    }

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        prefix = self.path.removesuffix("/api/ask")
        if prefix == "/silent":
            time.sleep(5)  # accepts, never answers within the client's timeout
            return
        if prefix == "/whoami":  # the address the request came from, as the body
            status, body = 200, f"from {self.client_address[0]}".encode()
        else:
            status, body = self.replies[prefix]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("/silent", ["--timeout", "1"], "sent no answer within 1 s (--timeout"),
        ("/html", [], "answered 200 with a body that is not JSON ('<html><body>502"),
        ("/empty", [], "not an answer: question: Field required"),
        ("/types", [], "not an answer: answer: Input should be a valid string"),
        ("/timeout", [], "gave up waiting for the question (HTTP 408"),
    ],
)
def test_ask_server_against_a_misbehaving_server_is_one_line_and_exit_69(
    clean_env: Path, misbehaving: str, path: str, args: list[str], message: str
) -> None:
    from bigbertha.cli import app

    started = time.monotonic()
    result = CliRunner().invoke(app, ["ask", "q", "--server", misbehaving + path, *args])
    assert result.exit_code == 69, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    if path == "/timeout":  # the server timed out on us: not a wrong URL
        assert "--server" not in lines[0]
    assert time.monotonic() - started < 4


def test_a_demo_rater_asks_from_its_own_loopback_address(misbehaving: str) -> None:
    """Without sign-on the chatbot's person is the client address: the demo's raters are
    different people by connecting from different 127/8 addresses."""
    for source in ("127.0.4.9", "127.1.0.2"):
        with pytest.raises(ServiceUnavailable, match=f"from {re.escape(source)}"):
            chat_api.ask_server(misbehaving + "/whoami", "q", source_address=source)


def test_ask_server_waits_30_s_by_default_and_the_setting_changes_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, misbehaving: str
) -> None:
    from bigbertha.cli import app

    assert Settings().chat.ask_timeout_seconds == 30
    monkeypatch.setenv("BIGBERTHA_CHAT__ASK_TIMEOUT_SECONDS", "0.5")
    result = CliRunner().invoke(app, ["ask", "q", "--server", misbehaving + "/silent"])
    assert result.exit_code == 69 and "within 0.5 s" in result.stderr


# --- one real `bigbertha chat` process ----------------------------------------------------


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def chat_server(
    redis_server: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`bigbertha chat` on a free port with a tiny Llama (no Milvus: answers say so)."""
    work = tmp_path_factory.mktemp("chat-api")
    model = tiny_llama(work / "tiny-chat", [HANDBOOK, MASCOT])
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BIGBERTHA_")},
        "BIGBERTHA_HOME": str(work / "home"),
        "BIGBERTHA_REDIS__URL": str(redis_server.extra["url"]),
        "BIGBERTHA_LLM__MODEL": str(model),
        "BIGBERTHA_LLM__MAX_NEW_TOKENS": "8",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
        "BIGBERTHA_CHAT__REQUEST_TIMEOUT_SECONDS": "3",
        "BIGBERTHA_LOG__FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
    }
    log = work / "chat.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BIGBERTHA, "chat", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "env": env, "process": process, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        assert not pid_alive(process.pid)


@pytest.mark.slow
def test_bigbertha_ask_server_asks_the_running_chatbot(chat_server: dict[str, Any]) -> None:
    url, process = chat_server["url"], chat_server["process"]
    seen: list[tuple[int, bool]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, chat_server["log"].read_text()[-3000:]
        try:
            code, body = _get(f"{url}/api/status")
        except OSError:
            time.sleep(0.3)
            continue
        seen.append((code, body["ready"]))
        if code == 200:
            break
        time.sleep(0.3)
    # The server answered before the model was loaded, then became ready with it.
    assert seen[0] == (503, False) and seen[-1] == (200, True), chat_server["log"].read_text()
    assert body["model_version"] == "tiny-chat" and body["swaps"] == 0

    result = subprocess.run(
        [BIGBERTHA, "ask", MASCOT, "--json", "--server", url],
        env=chat_server["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["question"] == MASCOT and doc["model_version"] == "tiny-chat"
    assert doc["error"] is None and 0 < doc["completion_tokens"] <= 8
    assert "retrieval_unavailable" in doc["warnings"]  # no Milvus here: said, not hidden


@pytest.mark.slow
def test_the_running_chatbot_enforces_its_limits(chat_server: dict[str, Any]) -> None:
    """`bigbertha chat` (Streamlit's own uvicorn) with the head deadline, body limits and a
    WebSocket session that outlives the deadline (the UI's stream is not cut off)."""
    import websockets.sync.client

    url = chat_server["url"]
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 120
    while _get(f"{url}/api/status")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    status, body, _, _ = _post(url, json.dumps({"question": "x" * 4001}).encode())
    assert status == 413 and body["error"].startswith("question: 4001 characters")
    status, body, _, _ = _post(url, b'{"question": "lone \\ud800"}')
    assert status == 400 and body["error"].startswith("body: contains an unpaired surrogate")
    status, body, _, _ = _post(url, b"[" * 30_000 + b"]" * 30_000)
    assert status == 400 and body["error"] == "body: JSON nested 30000 deep; at most 32"

    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/_stcore/stream") as session:
        started = time.monotonic()
        # An incomplete request head is cut off after chat.request_timeout_seconds (3 s)...
        assert _raw(port, b"GET /api/status HTTP/1.1\r\nHost: x\r\n", wait=15) == b""
        assert time.monotonic() - started >= 3
        session.ping().wait(5)  # ...while the UI's WebSocket, open longer, still answers
    assert "Traceback" not in chat_server["log"].read_text()
