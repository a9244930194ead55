"""The chatbot's JSON API (chat_api.py): /api/status and /api/ask over the engine the UI uses,
through Starlette's TestClient with a stub model and retriever on a real Redis; `bigbertha ask
--server` against a real `bigbertha chat` process; and the client's errors with no server."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.chat import api as chat_api
from bigbertha.chat.llm import Message, ModelLoadError
from bigbertha.chat.rag import Answer, RagEngine, render
from bigbertha.core.settings import Settings
from bigbertha.local.tiny_llama import tiny_llama
from bigbertha.telemetry.feedback import FeedbackLog
from bigbertha.telemetry.recorder import METRICS_KEY, field
from tests.chat.helpers import (
    HANDBOOK,
    MASCOT,
    StubModel,
    Tokens,
    client_for,
    metric,
    stub_engine,
)
from tests.services import Service, free_port, pid_alive

BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")


def settings_for(redis: Service, model: str = "stub-1", **chat: Any) -> Settings:
    # A collection name of its own: rag.shared_engine keeps one engine per distinct settings.
    return Settings(
        redis={"url": redis.extra["url"], "timeout_seconds": 0.5},
        milvus={"collection": f"api_{uuid.uuid4().hex[:8]}"},
        llm={"model": model},
        chat={"champion_alias": "", **chat},
    )


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

    response = client.post("/api/ask", json={"question": MASCOT, "feedback": "down"})
    assert response.status_code == 200
    doc = response.json()
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
    assert client.post("/api/ask", json={"question": MASCOT}).status_code == 200
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 1


def test_a_failed_answer_is_not_rated(redis_server: Service) -> None:
    settings = settings_for(redis_server, model="broken")
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    ups = metric(settings, "bigbertha_feedback_total", "broken", "up")
    doc = client_for(slot).post("/api/ask", json={"question": MASCOT, "feedback": "up"}).json()
    assert "LLM endpoint unreachable" in doc["error"]
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


def refused(settings: Settings, reason: str) -> float:
    client = FeedbackLog.from_settings(settings).client
    return float(client.hget(METRICS_KEY, field("bigbertha_chat_refused_total", reason)) or 0)


def wait_for_count(read: Callable[[], float], expected: float, timeout: float = 10) -> float:
    """Refusals are written after the response (a background task): poll for them."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


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
    import uvicorn
    from starlette.applications import Starlette

    from bigbertha.chat import limits

    GatedModel.gate.clear()
    settings = settings_for(
        redis_server,
        max_concurrent_answers=2,
        max_queued_answers=8,
        request_timeout_seconds=2,
    )
    slot = chat_api.EngineSlot(settings, functools.partial(stub_engine, model=GatedModel))
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
        GatedModel.gate.set()
        server.should_exit = True
        thread.join(10)


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
