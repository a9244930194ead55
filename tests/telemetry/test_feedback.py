"""The feedback log against a real Redis: turns, ratings, the bound, and Redis going away."""

from __future__ import annotations

import json

import pytest

from bigbertha.core.settings import Settings
from bigbertha.telemetry.feedback import KEY, FeedbackLog, FeedbackSource, Turn
from tests.services import Service, ServiceManager


def _turn(question: str = "How long do refunds take?") -> Turn:
    return Turn(
        question=question,
        answer="Refunds are paid within 5 business days [1].",
        sources=[FeedbackSource("s3://docs/handbook.pdf", 3, 0.71)],
        model_version="2",
        context=[{"text": "Refunds are paid within 5 business days.", "label": "handbook.pdf"}],
        conversation="session-1",
    )


@pytest.fixture
def log(redis_server: Service) -> FeedbackLog:
    settings = Settings(redis={"url": redis_server.extra["url"]}, chat={"feedback_log_size": 3})
    feedback = FeedbackLog.from_settings(settings)
    feedback.client.delete(KEY)
    return feedback


def test_turn_and_rating_are_complete_records_sharing_the_turn_id(log: FeedbackLog) -> None:
    turn = _turn()
    assert log.append(turn)
    assert log.rate(turn, "up")
    rating, served = log.read()
    assert served["rating"] is None and rating["rating"] == "up"
    assert rating["turn_id"] == served["turn_id"] == turn.turn_id
    # The rating record alone is enough to build a training example (TRAIN reads "up" records).
    assert rating["question"] == "How long do refunds take?"
    assert rating["answer"].startswith("Refunds are paid")
    assert rating["sources"] == [{"source": "s3://docs/handbook.pdf", "page": 3, "score": 0.71}]
    assert rating["model_version"] == "2" and rating["ts"] >= served["ts"]
    # ... with the passages the model was prompted with, so training rebuilds that prompt.
    assert rating["context"] == [
        {"text": "Refunds are paid within 5 business days.", "label": "handbook.pdf"}
    ]
    # ... and with its conversation, so training holds whole conversations out for evaluation.
    assert rating["conversation"] == served["conversation"] == "session-1"
    raw = log.client.lindex(KEY, 0)
    assert set(json.loads(raw)) == {
        "ts", "question", "answer", "sources", "model_version", "context", "rating", "turn_id",
        "conversation", "contributor",
    }  # fmt: skip


def test_log_is_bounded_and_keeps_the_newest(log: FeedbackLog) -> None:
    for n in range(5):
        assert log.append(_turn(f"question {n}"))
    records = log.read()
    assert [r["question"] for r in records] == ["question 4", "question 3", "question 2"]
    assert log.client.llen(KEY) == 3
    assert [r["question"] for r in log.read(limit=1)] == ["question 4"]


def test_bad_rating_is_refused(log: FeedbackLog) -> None:
    with pytest.raises(ValueError, match="'meh'"):
        log.rate(_turn(), "meh")  # type: ignore[arg-type]


def test_redis_down_loses_the_turn_but_never_raises(services: ServiceManager) -> None:
    redis = services.redis()
    feedback = FeedbackLog.from_settings(Settings(redis={"url": redis.extra["url"]}))
    assert feedback.append(_turn()) and feedback.available
    redis.stop()
    assert not feedback.append(_turn())
    assert not feedback.rate(_turn(), "down")
    assert feedback.read() == []
    assert not feedback.available


def test_without_redis_url_the_log_is_off() -> None:
    feedback = FeedbackLog.from_settings(Settings())
    assert not feedback.enabled and not feedback.append(_turn()) and feedback.read() == []
