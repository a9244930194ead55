"""The Streamlit UI with Streamlit's AppTest: chat flow, streamed answer, sources, feedback,
degraded-mode banners, and a model that cannot load shown as an error instead of a traceback."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bigbertha.chat import rag
from bigbertha.chat import ui as chat_app
from bigbertha.core.settings import Settings, load
from bigbertha.documents import ingest
from tests.chat.helpers import HANDBOOK, MASCOT, engine_for, metric
from tests.services import Service

APP = Path(chat_app.__file__)


@pytest.fixture
def app_env(
    milvus_server: Service,
    redis_server: Service,
    tmp_path_factory: pytest.TempPathFactory,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The environment the app reads its settings from, with the handbook ingested."""
    env = {
        "BIGBERTHA_MILVUS__URI": str(milvus_server.extra["uri"]),
        "BIGBERTHA_MILVUS__COLLECTION": "chat_app_test",
        "BIGBERTHA_REDIS__URL": str(redis_server.extra["url"]),
        "BIGBERTHA_REDIS__TIMEOUT_SECONDS": "0.5",
        "BIGBERTHA_LLM__MAX_NEW_TOKENS": "24",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
        "BIGBERTHA_CHAT__SIMILARITY_CUTOFF": "0.3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load()
    docs = tmp_path_factory.mktemp("app-docs")
    (docs / "handbook.md").write_text(HANDBOOK)
    ingest.run(settings, [str(docs / "handbook.md")])
    return settings


@pytest.mark.slow
def test_chat_flow_streams_answer_with_sources_and_records_thumbs_down(app_env: Settings) -> None:
    from streamlit.testing.v1 import AppTest

    # The app's process-wide engine, built here on the session's SmolLM2 (one load per session).
    engine = rag.shared_engine(app_env, build=engine_for)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception
    assert "`smollm2`" in at.sidebar.markdown[0].value
    at.chat_input[0].set_value(MASCOT).run()
    assert not at.exception

    user, assistant = at.chat_message
    assert user.markdown[0].value == MASCOT
    assert "Gloria" in assistant.markdown[0].value
    sources = assistant.expander[0]
    assert sources.label == "Sources (1)"
    assert "handbook.md, section The BigBertha Handbook > Office" in sources.markdown[0].value
    assert "model smollm2" in assistant.caption[-1].value

    downs = metric(app_env, "bigbertha_feedback_total", "smollm2", "down")
    at.feedback[0].set_value(0).run()  # 0 is thumbs down
    assert not at.exception
    assert metric(app_env, "bigbertha_feedback_total", "smollm2", "down") == downs + 1
    rated = engine.feedback.read(limit=1)[0]
    assert rated["rating"] == "down" and rated["question"] == MASCOT
    assert any("rated this answer down (model smollm2)" in c.value for c in at.caption)

    # A second question keeps the first answer (with its rating) in the session's history.
    at.chat_input[0].set_value("How long do refunds take?").run()
    assert len(at.chat_message) == 4 and len(at.feedback) == 2


@pytest.mark.slow
def test_redis_down_is_shown_on_the_answer_and_in_the_sidebar(
    app_env: Settings, services: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    redis = services.redis()  # type: ignore[attr-defined]
    monkeypatch.setenv("BIGBERTHA_REDIS__URL", redis.extra["url"])
    rag.shared_engine(load(), build=engine_for)
    redis.stop()
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.chat_input[0].set_value(MASCOT).run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("Metrics are not being recorded" in w for w in warnings)
    assert any("Redis unreachable" in w.value for w in at.sidebar.warning)
    at.feedback[0].set_value(1).run()
    assert any("not stored" in c.value for c in at.caption)


def test_model_that_cannot_load_is_an_error_message(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BIGBERTHA_LLM__MODEL", str(clean_env / "no-such-model"))
    monkeypatch.setenv("BIGBERTHA_CHAT__CHAMPION_ALIAS", "")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "The chatbot cannot start" in at.error[0].value
    assert "no-such-model" in at.error[0].value


@pytest.fixture
def stub_env(
    redis_server: Service, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, rag.RagEngine]:
    """The app's settings from the environment, its shared engine a stub (no model, no Milvus)."""
    from tests.chat.helpers import stub_engine

    env = {
        "BIGBERTHA_MILVUS__COLLECTION": f"ui_{uuid.uuid4().hex[:8]}",
        "BIGBERTHA_REDIS__URL": str(redis_server.extra["url"]),
        "BIGBERTHA_LLM__MODEL": "stub-ui",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
        "BIGBERTHA_CHAT__MAX_QUESTION_CHARS": "50",
        "BIGBERTHA_CHAT__MAX_CONCURRENT_ANSWERS": "1",
        "BIGBERTHA_CHAT__MAX_QUEUED_ANSWERS": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load()
    return settings, rag.shared_engine(settings, build=stub_engine)


def test_the_input_box_and_the_server_bound_the_question(
    stub_env: tuple[Settings, rag.RagEngine],
) -> None:
    from streamlit.testing.v1 import AppTest

    settings, engine = stub_env
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    # The browser stops typing at max_chars, and Streamlit's server cuts a longer value sent by
    # a client that ignores it (ChatInputSerde), so no more than 50 characters get through.
    assert at.chat_input[0].max_chars == 50
    logged = len(engine.feedback.read())
    at.chat_input[0].set_value("what\x00now").run()
    assert not at.exception and not at.chat_message
    (warning,) = [w.value for w in at.warning]
    assert warning == "Not answered: question: control character U+0000 at 4"
    assert len(engine.feedback.read()) == logged  # nothing of it was answered or logged
    at.chat_input[0].set_value(MASCOT + " " + "x" * 60).run()
    assert "Gloria" in at.chat_message[1].markdown[0].value
    assert engine.feedback.read(limit=1)[0]["question"] == (MASCOT + " " + "x" * 60)[:50]


def test_a_full_queue_is_a_warning_not_a_wait(stub_env: tuple[Settings, rag.RagEngine]) -> None:
    from streamlit.testing.v1 import AppTest

    settings, engine = stub_env
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    with engine.queue.admit():  # another session holds the only slot; none may wait
        at.chat_input[0].set_value(MASCOT).run()
    assert not at.exception and not at.chat_message
    assert at.warning[0].value.startswith("Not answered: busy: 1 questions are being answered")
    assert "retry in" in at.warning[0].value


def test_a_session_is_one_conversation_and_the_sidebar_shows_the_canary(
    redis_server: Service, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a canary every answer of a browser session comes from the same model."""
    import uuid

    from streamlit.testing.v1 import AppTest

    from tests.chat.helpers import canary_engine

    monkeypatch.setenv("BIGBERTHA_REDIS__URL", str(redis_server.extra["url"]))
    monkeypatch.setenv("BIGBERTHA_MILVUS__COLLECTION", f"ui_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("BIGBERTHA_CHAT__CHAMPION_ALIAS", "")
    engine = rag.shared_engine(load(), build=canary_engine)  # champion 1, challenger 2 at 50%
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert any(
        "Canary: version `2` answers 50% of conversations." in c.value for c in at.sidebar.caption
    )
    conversation = at.session_state["conversation"]
    for question in (MASCOT, "And who feeds the mascot?", "Where does it live?"):
        at.chat_input[0].set_value(question).run()
        assert not at.exception
    answers = at.session_state["history"]
    assert {a.conversation for a in answers} == {conversation}
    expected = engine.router.model_for(conversation).version
    assert {a.model_version for a in answers} == {expected}
    assert all(f"model {expected}" in m.caption[-1].value for m in at.chat_message[1::2])
