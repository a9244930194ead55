"""The canary's routing: which model answers a conversation, measured over many conversations;
the challenger's server without fallback; the engine and the JSON API routing by conversation id.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from bigbertha.chat import api as chat_api
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.routing import ModelRouter, bucket
from bigbertha.core.settings import Settings
from tests.chat.helpers import MASCOT, Alias, StubModel, canary_engine, client_for, router_for, stub
from tests.services import Service
from tests.serving.fake_vllm import FakeVllm, Lora, write_adapter


def shares(router: ModelRouter, conversations: list[str]) -> float:
    versions = [router.model_for(c).version for c in conversations]
    return versions.count("2") / len(versions)


CONVERSATIONS = [f"conversation-{n}" for n in range(10_000)]


def test_buckets_are_stable_uniform_numbers() -> None:
    assert bucket("abc") == bucket("abc") and bucket("abc") != bucket("abd")
    assert bucket("abc", "models:/m/2") != bucket("abc", "models:/m/3")  # a fresh cohort
    values = [bucket(c) for c in CONVERSATIONS]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.49 < sum(values) / len(values) < 0.51  # a uniform mean
    # Pinned: the same id falls in the same bucket on every machine and Python version.
    assert bucket("conversation-0", "models:/m/2") == pytest.approx(0.16227, abs=1e-5)


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_the_challenger_gets_its_share_of_10000_conversations(share: float) -> None:
    router, _ = router_for(share)
    measured = shares(router, CONVERSATIONS)
    # Binomial standard deviation at n=10,000 is at most 0.005: four of them.
    assert measured == pytest.approx(share, abs=0.02)
    # Ids shaped like the ones the API generates (uuid4 hex; seeded, so the test is fixed).
    rng = random.Random(17)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4).hex for _ in range(10_000)]
    assert shares(router, ids) == pytest.approx(share, abs=0.02)


def test_every_turn_of_a_conversation_gets_the_same_model() -> None:
    router, _ = router_for(0.3)
    first = {c: router.model_for(c).version for c in CONVERSATIONS[:2000]}
    again = {c: router.model_for(c).version for c in reversed(CONVERSATIONS[:2000])}
    assert first == again
    # Another process with its own servers (another replica) routes each one the same way.
    other, _ = router_for(0.3)
    assert {c: other.model_for(c).version for c in first} == first


def test_a_new_challenger_draws_a_fresh_cohort() -> None:
    router, alias = router_for(0.2)
    cohort = {c for c in CONVERSATIONS if router.model_for(c).version == "2"}
    alias.ref = "models:/m/3"
    assert router.challenger is not None and router.challenger.check_now()
    newer = {c for c in CONVERSATIONS if router.model_for(c).version == "3"}
    assert len(newer) / len(CONVERSATIONS) == pytest.approx(0.2, abs=0.02)
    # Independent cohorts overlap by about share squared, not by the whole cohort.
    assert len(cohort & newer) / len(CONVERSATIONS) == pytest.approx(0.04, abs=0.015)


def test_no_challenger_means_the_champion_for_everyone() -> None:
    router, alias = router_for(0.5, challenger=None)
    assert router.canary() is None and shares(router, CONVERSATIONS[:1000]) == 0.0
    # The alias appears: the challenger server loads it, and the canary starts.
    alias.ref = "models:/m/2"
    assert router.challenger is not None and router.challenger.check_now()
    canary = router.canary()
    assert canary is not None and (canary.version, canary.share) == ("2", 0.5)
    assert shares(router, CONVERSATIONS[:1000]) == pytest.approx(0.5, abs=0.06)


def test_retiring_the_challenger_returns_its_conversations_to_the_champion() -> None:
    router, alias = router_for(1.0)
    released: list[str] = []
    assert router.challenger is not None
    router.challenger.on_release = lambda model: released.append(model.version)
    in_flight = router.model_for("c-1")
    assert in_flight.version == "2"

    alias.down = True  # an unreachable registry is no reason to stop the canary
    assert router.challenger.check_now() is False and router.model_for("c-1").version == "2"
    alias.down = False
    alias.ref = None  # the canary decided: the alias is removed
    assert router.challenger.check_now() is True
    assert released == ["2"] and router.canary() is None
    assert router.model_for("c-1").version == "1"
    assert in_flight.version == "2"  # an answer that already holds the model keeps it
    assert router.challenger.status().ref == "" and router.challenger.check_now() is False


def test_a_challenger_that_fails_to_load_leaves_the_champion_serving() -> None:
    def load(ref: str) -> StubModel:
        if ref.endswith("/2"):
            raise OSError("adapter_model.safetensors: truncated file")
        return stub(ref)

    champion = ModelServer(stub, fallback_ref="base", champion=Alias("models:/m/1"))
    challenger = ModelServer(load, fallback_ref=None, champion=Alias("models:/m/2"))
    router = ModelRouter(champion, challenger, 0.5).start(watch=False)
    assert router.canary() is None and shares(router, CONVERSATIONS[:500]) == 0.0
    assert "truncated" in (challenger.status().last_error or "")


def test_share_zero_builds_no_second_server_and_bad_shares_are_refused() -> None:
    settings = Settings(chat={"champion_alias": ""}, llm={"model": "stub"})
    assert ModelRouter.from_settings(settings).challenger is None
    with_canary = settings.model_copy(
        update={"canary": settings.canary.model_copy(update={"share": 0.1})}
    )
    router = ModelRouter.from_settings(with_canary)
    assert router.challenger is not None and router.share == 0.1
    with pytest.raises(ValueError, match="within 0..1"):
        ModelRouter(router.champion, None, 1.5)


# --- the engine and the API route by conversation ------------------------------------------


def api_settings(redis: Service) -> Settings:
    return Settings(
        redis={"url": redis.extra["url"], "timeout_seconds": 0.5},
        milvus={"collection": f"routing_{uuid.uuid4().hex[:8]}"},
        chat={"champion_alias": ""},
    )


def test_the_engine_answers_each_conversation_with_its_model(redis_server: Service) -> None:
    engine = canary_engine(api_settings(redis_server))
    for conversation in CONVERSATIONS[:40]:
        answer = engine.ask(MASCOT, conversation=conversation)
        assert answer.conversation == conversation
        assert answer.model_version == engine.router.model_for(conversation).version
        assert answer.turn.model_version == answer.model_version  # what a rating is counted for
    unnamed = {engine.ask(MASCOT).conversation for _ in range(3)}
    assert len(unnamed) == 3  # no id given: each question is a new conversation


def test_the_api_returns_a_conversation_id_and_keeps_its_model(redis_server: Service) -> None:
    slot = chat_api.EngineSlot(api_settings(redis_server), canary_engine)
    slot.start().join(10)
    client = client_for(slot)
    status = client.get("/api/status").json()
    assert status["canary"] == {"version": "2", "ref": "models:/m/2", "share": 0.5}

    versions: dict[str, set[str]] = {}
    for _ in range(30):
        first: dict[str, Any] = client.post("/api/ask", json={"question": MASCOT}).json()
        conversation = first["conversation"]
        assert conversation and len(conversation) <= 128
        for _ in range(2):
            turn = client.post(
                "/api/ask", json={"question": MASCOT, "conversation": conversation}
            ).json()
            assert turn["conversation"] == conversation
            versions.setdefault(conversation, set()).add(turn["model_version"])
        versions[conversation].add(first["model_version"])
    assert all(len(v) == 1 for v in versions.values())  # sticky
    assert {v for vs in versions.values() for v in vs} == {"1", "2"}  # both sides answered

    bad = client.post("/api/ask", json={"question": MASCOT, "conversation": "a b"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("conversation:")
    bad = client.post("/api/ask", json={"question": MASCOT, "conversation": "x" * 129})
    assert bad.status_code == 400


# --- the same routing on the inference tier: the challenger is a second adapter name ----------


def test_on_the_tier_the_challenger_is_a_second_adapter_of_the_same_base(tmp_path: Path) -> None:
    """The OpenAI backend asks the tier (here the fake of vLLM 0.33.0's API, see
    tests/serving/fake_vllm.py) for each version's served name: the router picks the name per
    conversation, the tier answers with that adapter, and the answer is labelled with the
    version number, as the in-process backend labels it."""
    from bigbertha.chat.model_server import chat_model_loader

    tier = FakeVllm(model="/models/base", served_names=["base"]).start()
    try:
        for version in ("1", "2"):  # what the tier's sidecar loads for champion and challenger
            path = write_adapter(tmp_path / version, base="/models/base")
            tier.loras[f"m-v{version}"] = Lora(f"m-v{version}", int(version), str(path))
        settings = Settings(
            llm={"backend": "openai", "api_base": f"{tier.url}/v1", "model": "base"},
            chat={"champion_alias": ""},
        )
        load = chat_model_loader(settings)
        champion = ModelServer(load, fallback_ref="base", champion=Alias("models:/m/1"))
        challenger = ModelServer(load, fallback_ref=None, champion=Alias("models:/m/2"))
        router = ModelRouter(champion, challenger, 0.3).start(watch=False)

        conversations = CONVERSATIONS[:60]
        expected = {c: router.model_for(c).version for c in conversations}
        labels = []
        for conversation in conversations:
            model = router.model_for(conversation)
            list(model.stream([{"role": "user", "content": "hi"}], max_new_tokens=4, temperature=0))
            labels.append(model.version)
        # Each conversation was answered by the adapter the router chose for it.
        assert tier.answered == [f"m-v{expected[c]}" for c in conversations]
        assert labels == [expected[c] for c in conversations]
        assert 0.1 < labels.count("2") / len(labels) < 0.5
    finally:
        tier.stop()
