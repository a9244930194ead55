"""The chatbot's bounds: question checks and the answer queue (the HTTP side is in test_api)."""

from __future__ import annotations

import threading

import pytest

from bigbertha.chat import limits
from bigbertha.core.errors import Busy, ExitCode, InputError


@pytest.mark.parametrize(
    ("question", "error", "status"),
    [
        ("   ", "question: must be a non-empty string", 400),
        ("x" * 101, "question: 101 characters; at most 100 (chat.max_question_chars)", 413),
        ("what\x00now", "question: control character U+0000 at 4", 400),
        ("bell\x07", "question: control character U+0007 at 4", 400),
        ("lone \ud800 surrogate", "question: unpaired surrogate U+D800 at 5", 400),
    ],
)
def test_questions_out_of_bounds_are_refused(question: str, error: str, status: int) -> None:
    with pytest.raises(limits.Refused) as info:
        limits.check_question(question, max_chars=100)
    assert str(info.value) == error
    assert info.value.status == status
    assert isinstance(info.value, InputError) and info.value.exit_code == ExitCode.INPUT


def test_good_questions_pass_stripped() -> None:
    text = "  Wie lange dauert\teine Erstattung?\r\nGrüße 🤖  "
    assert limits.check_question(text, 100) == text.strip()
    assert limits.check_question("x" * 100, 100) == "x" * 100


def test_the_queue_admits_slots_plus_depth_then_refuses_with_retry_after() -> None:
    queue = limits.AnswerQueue(slots=2, depth=3)
    release = threading.Event()
    admitted = threading.Barrier(6)

    def answer() -> None:
        with queue.admit():
            admitted.wait(5)
            release.wait(5)

    threads = [threading.Thread(target=answer) for _ in range(5)]
    for thread in threads:
        thread.start()
    admitted.wait(5)  # all five inside
    with pytest.raises(limits.QueueFull) as info, queue.admit():
        pass
    assert isinstance(info.value, Busy) and info.value.exit_code == ExitCode.BUSY
    assert info.value.status == 503 and 1 <= info.value.retry_after <= 60
    assert str(info.value).startswith("busy: 5 questions are being answered or waiting")
    assert "retry in" in str(info.value) and queue.refused == 1
    release.set()
    for thread in threads:
        thread.join(5)
    assert queue.active == 0
    with queue.admit():  # room again
        assert queue.active == 1


def test_a_failed_answer_leaves_the_queue() -> None:
    queue = limits.AnswerQueue(slots=1, depth=0)
    with pytest.raises(RuntimeError), queue.admit():
        raise RuntimeError("generation blew up")
    assert queue.active == 0
    with queue.admit():
        assert queue.active == 1


def test_bigbertha_ask_refuses_a_question_out_of_bounds_before_loading_a_model(
    clean_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bigbertha.chat import rag
    from bigbertha.cli import app

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded for a refused question")

    monkeypatch.setattr(rag.RagEngine, "from_settings", no_model)
    monkeypatch.setenv("BIGBERTHA_CHAT__MAX_QUESTION_CHARS", "20")
    result = CliRunner().invoke(app, ["ask", "x" * 21])
    assert result.exit_code == ExitCode.INPUT
    assert result.stderr.strip() == (
        "error: question: 21 characters; at most 20 (chat.max_question_chars)"
    )
