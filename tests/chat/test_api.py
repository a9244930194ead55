"""The chatbot's JSON API (chat_api.py): /api/status and /api/ask over the engine the UI uses,
through Starlette's TestClient with a stub model and retriever on a real Redis; `bigbertha ask
--server` against a real `bigbertha chat` process; and the client's errors with no server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.chat import api as chat_api
from bigbertha.chat.llm import GenerationError, Message, ModelLoadError
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.rag import Answer, RagEngine, render
from bigbertha.core.settings import Settings
from bigbertha.local.tiny_llama import tiny_llama
from bigbertha.telemetry.feedback import FeedbackLog
from bigbertha.telemetry.recorder import Recorder
from tests.chat.helpers import HANDBOOK, MASCOT, chunk, metric
from tests.services import Service, free_port, pid_alive

BIGBERTHA = str(Path(sys.executable).parent / "bigbertha")


class _Tokens:
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
    ) -> _Tokens:
        return _Tokens(["The mascot is ", "Gloria [1]."], fail=self.version == "broken")


class StubRetriever:
    def retrieve(self, question: str) -> list[Any]:
        return [chunk("The office mascot is a purple walrus named Gloria.", 0.8, section="Office")]


def stub_engine(settings: Settings) -> RagEngine:
    return RagEngine(
        settings,
        retriever=StubRetriever(),  # type: ignore[arg-type]
        models=ModelServer(StubModel, fallback_ref=settings.llm.model).start(),
        recorder=Recorder.from_settings(settings),
        feedback=FeedbackLog.from_settings(settings),
    )


def settings_for(redis: Service, model: str = "stub-1") -> Settings:
    # A collection name of its own: rag.shared_engine keeps one engine per distinct settings.
    return Settings(
        redis={"url": redis.extra["url"], "timeout_seconds": 0.5},
        milvus={"collection": f"api_{uuid.uuid4().hex[:8]}"},
        llm={"model": model},
        chat={"champion_alias": ""},
    )


def client_for(slot: chat_api.EngineSlot) -> Any:
    from starlette.applications import Starlette

    with warnings.catch_warnings():  # "install httpx2": not needed for these in-process calls
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient
    return TestClient(Starlette(routes=chat_api.routes(slot)))


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
