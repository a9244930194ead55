"""People, not clicks (chat/identity.py): pseudonyms on every turn and vote, and per-person
limits on questions and votes shared by every replica through the real Redis."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from bigbertha.chat import api as chat_api
from bigbertha.chat import identity
from tests.chat.helpers import (
    MASCOT,
    client_for,
    metric,
    refused,
    settings_for,
    stub_engine,
    wait_for_count,
)
from tests.services import Service, free_port

KEY = "a key from the chart's Secret"


def test_a_pseudonym_is_keyed_stable_and_never_the_subject() -> None:
    one = identity.pseudonym("alice@example.com", b"k1")
    assert one == identity.pseudonym("alice@example.com", b"k1")  # every replica agrees
    assert len(one) == 32 and int(one, 16) >= 0
    assert one != identity.pseudonym("alice@example.com", b"k2")  # no key, no link back
    assert one != identity.pseudonym("bob@example.com", b"k1")
    assert "alice" not in one


def _slot(redis_server: Service, **chat: Any) -> chat_api.EngineSlot:
    settings = settings_for(
        redis_server, trusted_proxies=1, identity_key=KEY, max_answers_per_client=50, **chat
    )
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    return slot


def _ask(client: Any, address: str, feedback: str | None = None) -> Any:
    body = {"question": MASCOT, "feedback": feedback}
    return client.post("/api/ask", json=body, headers={"X-Forwarded-For": address})


def test_one_persons_votes_stop_at_the_limit_and_the_others_still_count(
    redis_server: Service,
) -> None:
    slot = _slot(redis_server, votes_per_hour=3, questions_per_minute=5)
    # Two replicas of the chatbot: one count between them, through Redis.
    other = client_for(_slot(redis_server, votes_per_hour=3, questions_per_minute=5))
    client = client_for(slot)
    settings = slot.get().settings
    downs = metric(settings, "bigbertha_feedback_total", "stub-1", "down")
    before = refused(settings, "person_limit")

    flooder = "198.51.100.7"
    assert [_ask(c, flooder, "down").status_code for c in (client, other, client)] == [200] * 3
    over = _ask(other, flooder, "down")
    assert over.status_code == 429
    assert over.json()["error"].startswith("too many votes: at most 3 per hour per person")
    assert 0 < int(over.headers["Retry-After"]) <= 3600
    # Someone else votes as before.
    assert _ask(client, "203.0.113.9", "down").status_code == 200
    # The fourth vote was never counted, nor its question answered.
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 4
    person_limit = functools.partial(refused, settings, "person_limit")
    assert wait_for_count(person_limit, before + 1) == before + 1

    # Questions: the flooder asked 3; 2 more are answered, the sixth is refused.
    assert [_ask(client, flooder).status_code for _ in range(2)] == [200, 200]
    too_many = _ask(other, flooder)
    assert too_many.status_code == 429 and "too many questions" in too_many.json()["error"]

    # Every logged turn names its person by pseudonym; the address is nowhere in the log.
    records = slot.get().feedback.read()
    flooder_id = slot.get().person(f"client:{flooder}")
    assert sum(r["contributor"] == flooder_id for r in records if r["rating"] is None) >= 5
    assert flooder not in json.dumps(records)


def test_limits_hold_per_window_and_redis_down_never_stops_the_chat(
    redis_server: Service, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.extra["url"])
    limits = identity.PersonLimits(client, {"question": 2, "vote": 0})
    person = identity.pseudonym("window-test", KEY.encode())
    start = 1_800_000_000.0  # a minute's start
    limits.admit(person, "question", now=start)
    limits.admit(person, "question", now=start + 30)
    with pytest.raises(identity.PersonLimited) as refused:
        limits.admit(person, "question", now=start + 50)
    assert refused.value.retry_after == 10 and refused.value.status == 429
    limits.admit(person, "question", now=start + 61)  # the next minute
    for _ in range(10):  # 0: no limit on votes
        limits.admit(person, "vote", now=start)

    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    unguarded = identity.PersonLimits(down, {"question": 1, "vote": 1})
    for _ in range(3):
        unguarded.admit(person, "question")
    assert sum("per-person limits not enforced" in r.message for r in caplog.records) == 1
