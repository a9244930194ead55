"""The recorder: aggregates in Redis, bounded memory, one round trip, and never breaks a chat."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bigbertha.core.errors import ConfigError
from bigbertha.core.settings import load
from bigbertha.telemetry import recorder as telemetry
from bigbertha.telemetry.recorder import METRICS_KEY, SERVING_KEY, Recorder
from tests.services import Service, ServiceManager, free_port


def answer(recorder: Recorder, version: str = "3", **overrides: object) -> None:
    kwargs: dict[str, object] = {
        "latency_s": 1.5,
        "ttft_s": 0.2,
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "scores": [0.82, 0.55, 0.05],
        "context_chunks": 3,
    }
    kwargs.update(overrides)
    recorder.record_answer(version, **kwargs)  # type: ignore[arg-type]


def stored(client: redis.Redis) -> dict[tuple[str, ...], float]:
    return {tuple(json.loads(k)): float(v) for k, v in client.hgetall(METRICS_KEY).items()}


@pytest.fixture
def redis_url(redis_server: Service) -> Iterator[str]:
    """The session Redis, database 11, emptied for each test (other areas use database 0)."""
    url = str(redis_server.extra["url"]).rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def recorder(redis_url: str) -> Recorder:
    # A generous timeout: these tests are about aggregation, not about a loaded CI machine.
    redis_settings = {"url": redis_url, "timeout_seconds": 1.0}
    settings = load(overrides={"redis": redis_settings, "mlflow": {"model_name": "bb"}})
    return Recorder.from_settings(settings)


def test_answer_aggregates_counters_and_histograms(recorder: Recorder, client: redis.Redis):
    answer(recorder)
    answer(recorder, latency_s=12.0, ttft_s=None, scores=[], context_chunks=0, error=True)
    data = stored(client)
    labels = ("bb", "3")
    assert data[("bigbertha_chat_requests_total", *labels)] == 2
    assert data[("bigbertha_chat_errors_total", *labels)] == 1
    assert data[("bigbertha_retrieval_empty_total", *labels)] == 1
    assert data[("bigbertha_chat_tokens_total", *labels, "prompt")] == 240
    assert data[("bigbertha_chat_tokens_total", *labels, "completion")] == 60
    # Buckets are stored per bucket (not cumulative): 1.5 s falls in (1, 2], 12 s in (10, 15].
    assert data[("bigbertha_chat_latency_seconds_bucket", *labels, "2.0")] == 1
    assert data[("bigbertha_chat_latency_seconds_bucket", *labels, "15.0")] == 1
    assert data[("bigbertha_chat_latency_seconds_sum", *labels)] == pytest.approx(13.5)
    # TTFT only for the answer that had one.
    assert data[("bigbertha_chat_ttft_seconds_bucket", *labels, "0.25")] == 1
    assert data[("bigbertha_chat_ttft_seconds_sum", *labels)] == pytest.approx(0.2)
    # Every retrieved score is observed: 0.82 -> 0.9, 0.55 -> 0.6, 0.05 -> 0.1.
    for bound in ("0.9", "0.6", "0.1"):
        assert data[("bigbertha_retrieval_score_bucket", *labels, bound)] == 1
    assert data[("bigbertha_retrieval_score_sum", *labels)] == pytest.approx(1.42)
    assert recorder.dropped == 0


def test_replicas_add_up_and_memory_is_bounded_by_series(redis_url: str, client: redis.Redis):
    settings = load(overrides={"redis": {"url": redis_url, "timeout_seconds": 1.0}})
    replicas = [Recorder.from_settings(settings) for _ in range(2)]
    for replica in replicas:
        for _ in range(20):
            answer(replica)
    fields_after_40 = client.hlen(METRICS_KEY)
    for _ in range(300):
        answer(replicas[0])
    assert client.hlen(METRICS_KEY) == fields_after_40  # 340 answers, same number of fields
    data = stored(client)
    assert data[("bigbertha_chat_requests_total", "bigbertha-llm", "3")] == 340


def test_threads_share_one_recorder_without_losing_counts(recorder: Recorder, client: redis.Redis):
    # Streamlit serves each session on its own thread, all with the process' one recorder.
    threads = [
        threading.Thread(target=lambda: [answer(recorder) for _ in range(50)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data = stored(client)
    assert data[("bigbertha_chat_requests_total", "bb", "3")] == 400
    assert data[("bigbertha_chat_tokens_total", "bb", "3", "prompt")] == 400 * 120
    assert recorder.dropped == 0


def test_each_call_is_one_round_trip(recorder: Recorder, monkeypatch: pytest.MonkeyPatch):
    sends: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sends.append(1)
        return original(self, command, check_health)

    answer(recorder)  # the first call also opens the connection; count the steady state
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    answer(recorder)
    recorder.record_feedback("3", "down")
    assert len(sends) == 2


def test_feedback_runs_promotions_and_serving_model(recorder: Recorder, client: redis.Redis):
    recorder.record_feedback("3", "down")
    recorder.record_feedback("3", "down")
    recorder.record_feedback("4", "up")
    recorder.record_retrain_run("succeeded")
    recorder.record_promotion("rollback")
    before = time.time()
    recorder.set_serving_model("4")
    data = stored(client)
    assert data[("bigbertha_feedback_total", "bb", "3", "down")] == 2
    assert data[("bigbertha_feedback_total", "bb", "4", "up")] == 1
    assert data[("bigbertha_retrain_runs_total", "succeeded")] == 1
    assert data[("bigbertha_promotions_total", "rollback")] == 1
    serving = {tuple(json.loads(k)): float(v) for k, v in client.hgetall(SERVING_KEY).items()}
    assert serving[("bb", "4")] >= before


def test_bad_values_are_dropped_not_raised(
    recorder: Recorder, client: redis.Redis, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, "bigbertha.telemetry.recorder")
    recorder.record_feedback("3", "meh")  # type: ignore[arg-type]
    recorder.record_retrain_run("exploded")
    recorder.record_promotion("maybe")
    answer(recorder, latency_s=float("nan"), scores=[float("inf"), 0.5])
    assert recorder.dropped == 3
    assert "rating 'meh' is not one of" in caplog.text
    data = stored(client)
    assert not any(k[0] == "bigbertha_feedback_total" for k in data)
    assert not any(k[0] == "bigbertha_chat_latency_seconds_bucket" for k in data)
    assert data[("bigbertha_retrieval_score_bucket", "bb", "3", "0.5")] == 1
    # The caller-bug drops reach the exporter's counter with the next successful write.
    assert data[("bigbertha_telemetry_dropped_total",)] == 3


def test_without_redis_the_recorder_is_a_counting_no_op(clean_env: object):
    recorder = Recorder.from_settings(load())
    answer(recorder)
    recorder.record_feedback("3", "up")
    recorder.set_serving_model("3")
    assert recorder.dropped == 3


def test_an_empty_url_is_off_and_a_malformed_one_is_a_clear_error(clean_env: object):
    assert Recorder.from_settings(load(overrides={"redis": {"url": ""}}))._client is None
    with pytest.raises(ConfigError, match=r"^invalid setting redis.url: .*redis://") as exc:
        Recorder.from_settings(load(overrides={"redis": {"url": "http://:hunter2@cache:6379"}}))
    assert "hunter2" not in str(exc.value)


def test_unreachable_redis_gives_up_fast_and_backs_off(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, "bigbertha.telemetry.recorder")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    recorder = Recorder.from_settings(load(overrides={"redis": {"url": url}}))
    started = time.perf_counter()
    for _ in range(200):
        answer(recorder)
    elapsed = time.perf_counter() - started
    assert recorder.dropped == 200
    assert elapsed < 0.5, f"200 answers with Redis down took {elapsed:.3f}s"
    warnings = [r for r in caplog.records if r.name == "bigbertha.telemetry.recorder"]
    assert len(warnings) == 1, "the outage is logged once per interval, not once per chat"
    assert "Redis unreachable" in warnings[0].getMessage()


@pytest.fixture
def own_redis(services: ServiceManager) -> Iterator[Service]:
    """A Redis this test may freeze and kill."""
    service = services.redis()
    yield service
    if service.process.poll() is None:
        os.kill(service.pid, signal.SIGCONT)
    service.stop()


def test_hung_then_stopped_redis_never_stalls_a_chat(own_redis: Service):
    now = [0.0]
    settings = load(overrides={"redis": {"url": own_redis.extra["url"], "timeout_seconds": 0.2}})
    recorder = Recorder.from_settings(settings)
    recorder._clock = lambda: now[0]  # control the back-off without sleeping
    client = redis.Redis.from_url(str(own_redis.extra["url"]), decode_responses=True)
    answer(recorder)

    os.kill(own_redis.pid, signal.SIGSTOP)  # Redis accepts nothing and answers nothing
    try:
        started = time.perf_counter()
        answer(recorder)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(50):
            answer(recorder)  # inside the back-off: no connection attempt at all
        backed_off = time.perf_counter() - started
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    assert first < 0.5, f"a hung Redis held the chat for {first:.3f}s"
    assert backed_off < 0.05
    assert recorder.dropped == 51

    now[0] += telemetry.BACKOFF_SECONDS + 0.1  # Redis is back and the back-off is over
    answer(recorder)
    data = stored(client)
    # The write that timed out sat in Redis' socket buffer and ran on SIGCONT: a timeout is
    # an unknown outcome, counted as a drop. The 50 skipped during the back-off never ran.
    assert data[("bigbertha_chat_requests_total", "bigbertha-llm", "3")] in (2, 3)
    assert data[("bigbertha_telemetry_dropped_total",)] == 51

    own_redis.stop()  # stopped mid-session: every call still returns at once
    now[0] += telemetry.BACKOFF_SECONDS + 0.1
    started = time.perf_counter()
    answer(recorder)
    recorder.record_feedback("3", "down")
    assert time.perf_counter() - started < 0.2
    assert recorder.dropped == 53


def test_refusals_from_many_threads_all_add_up(recorder: Recorder, client: redis.Redis):
    threads = [
        threading.Thread(target=recorder.record_refused, args=(reason,))
        for reason in ["busy"] * 150 + ["too_large"] * 50
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    data = stored(client)
    assert data[("bigbertha_chat_refused_total", "busy")] == 150
    assert data[("bigbertha_chat_refused_total", "too_large")] == 50
    recorder.record_refused("because")
    assert recorder.dropped == 1  # a caller bug, counted, never raised


def test_the_serving_hash_keeps_the_versions_that_matter_and_scrapes_bounded(
    recorder: Recorder, client: redis.Redis, redis_url: str
) -> None:
    """Issue 25 item 6: 20,000 versions ever served scraped as 140,000 series (12 MB)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from bigbertha.telemetry.exporter import TelemetryCollector

    now = time.time()
    old = {telemetry.field("bb", f"old-{i}"): repr(now - 86_400 + i) for i in range(20_000)}
    client.hset(SERVING_KEY, mapping=old)
    client.hset(SERVING_KEY, telemetry.field("bb", "from-2100"), repr(4_102_444_800.0))
    # The challenger started long ago and is kept however old; previous, then champion, serve.
    client.hset(SERVING_KEY, telemetry.field("bb", "challenger"), repr(now - 90_000))
    recorder.set_canary("challenger", now - 90_000)
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(redis.Redis.from_url(redis_url)))

    unbounded = generate_latest(registry)  # read side alone: the rule bounds it too
    recorder.set_serving_model("previous")
    time.sleep(0.01)
    answer(recorder, "champion")
    kept = {json.loads(f)[1] for f in client.hkeys(SERVING_KEY)}
    assert {"champion", "previous", "challenger"} <= kept
    assert "from-2100" not in kept
    assert len(kept) == telemetry.SERVING_VERSIONS_KEPT + 1  # plus the challenger
    scrape = generate_latest(registry)
    assert len(unbounded) < 100_000 and len(scrape) < 100_000, (len(unbounded), len(scrape))
    info = [ln for ln in scrape.decode().splitlines() if ln.startswith("bigbertha_model_info{")]
    # The champion and the previous version answered within the window; nothing from 2100.
    assert sorted(ln.split('"')[3] for ln in info) == ["champion", "previous"]
    print(f"scrape: {len(unbounded)} bytes before the trim, {len(scrape)} after")


def test_one_vote_per_answer_a_changed_vote_moves(recorder: Recorder, client: redis.Redis):
    """Rating an answer again replaces its vote: up then down is one down vote standing (the up
    counted as replaced, so counters never go down), and the same rating twice is one vote."""
    recorder.record_feedback("3", "up", "answer-1")
    recorder.record_feedback("3", "up", "answer-1")  # a double click
    recorder.record_feedback("3", "down", "answer-1")  # changed their mind
    recorder.record_feedback("3", "down", "answer-2")
    data = stored(client)
    cast = {r: data.get(("bigbertha_feedback_total", "bb", "3", r), 0) for r in ("up", "down")}
    replaced = {
        r: data.get(("bigbertha_feedback_replaced_total", "bb", "3", r), 0) for r in ("up", "down")
    }
    assert cast == {"up": 1, "down": 2} and replaced == {"up": 1, "down": 0}
    assert recorder.feedback_totals() == {
        ("bigbertha_feedback_total", "3", "up"): 1,
        ("bigbertha_feedback_total", "3", "down"): 2,
        ("bigbertha_feedback_replaced_total", "3", "up"): 1,
    }
    from bigbertha.telemetry.votes import Votes, standing

    totals = recorder.feedback_totals()
    assert totals is not None
    assert standing(totals) == {"3": Votes(up=0, down=2)}  # two answers, two down votes
    assert recorder.dropped == 0
