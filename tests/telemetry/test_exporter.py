"""The exporter: real metric families from Redis, OpenMetrics, /healthz, and Redis down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from bigbertha.core.errors import ConfigError
from bigbertha.core.settings import Settings, load
from bigbertha.telemetry.exporter import create_app, make_server
from bigbertha.telemetry.recorder import METRICS_KEY, SERVING_KEY, Recorder, field
from tests.services import Service, ServiceManager, free_port, require_binary
from tests.telemetry.helpers import record_traffic

CHAT = {"model": "bb", "model_version": "7"}


@pytest.fixture
def redis_url(redis_server: Service) -> Iterator[str]:
    """The session Redis, database 12, emptied for each test."""
    url = str(redis_server.extra["url"]).rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    redis_settings = {"url": redis_url, "timeout_seconds": 1.0}  # a loaded CI machine
    return load(overrides={"redis": redis_settings, "mlflow": {"model_name": "bb"}})


def drive(settings: Settings) -> None:
    record_traffic(Recorder.from_settings(settings), "7")


def test_collector_yields_counters_histograms_and_gauges(settings: Settings):
    drive(settings)
    registry = CollectorRegistry()
    create_app(settings, registry=registry)
    value = registry.get_sample_value
    assert value("bigbertha_exporter_redis_up") == 1
    assert value("bigbertha_chat_requests_total", CHAT) == 4
    assert value("bigbertha_chat_errors_total", CHAT) == 1
    assert value("bigbertha_retrieval_empty_total", CHAT) == 1
    assert value("bigbertha_chat_tokens_total", {**CHAT, "kind": "prompt"}) == 310
    assert value("bigbertha_chat_tokens_total", {**CHAT, "kind": "completion"}) == 60
    assert value("bigbertha_feedback_total", {**CHAT, "rating": "down"}) == 1
    # Known label sets start at zero, so the first event is a visible increase.
    assert value("bigbertha_feedback_total", {**CHAT, "rating": "up"}) == 0
    assert value("bigbertha_retrain_runs_total", {"result": "failed"}) == 1
    assert value("bigbertha_retrain_runs_total", {"result": "succeeded"}) == 0
    assert value("bigbertha_promotions_total", {"decision": "promoted"}) == 1
    assert value("bigbertha_telemetry_dropped_total") == 0
    assert value("bigbertha_model_info", CHAT) == 1
    # Histogram buckets are cumulative; count is the +Inf bucket.
    bucket = "bigbertha_chat_latency_seconds_bucket"
    assert value(bucket, {**CHAT, "le": "0.25"}) == 1
    assert value(bucket, {**CHAT, "le": "1.0"}) == 3
    assert value(bucket, {**CHAT, "le": "4.0"}) == 4
    assert value(bucket, {**CHAT, "le": "+Inf"}) == 4
    assert value("bigbertha_chat_latency_seconds_count", CHAT) == 4
    assert value("bigbertha_chat_latency_seconds_sum", CHAT) == pytest.approx(4.2)
    assert value("bigbertha_chat_ttft_seconds_count", CHAT) == 3
    assert value("bigbertha_retrieval_score_count", CHAT) == 6
    assert value("bigbertha_retrieval_score_sum", CHAT) == pytest.approx(3.9)


def test_voters_are_people_not_votes_over_the_window(settings: Settings, redis_url: str):
    """One person's hundred down votes are one voter, a second person makes two; a vote
    outside the window is not counted; the counters still count every vote."""
    from bigbertha.telemetry import recorder as rec

    recorder = Recorder.from_settings(settings)
    recorder.set_serving_model("7")
    for n in range(100):
        recorder.record_feedback("7", "down", f"answer-{n}", person="flooder")
    recorder.record_feedback("7", "down", "answer-x", person="someone-else")
    recorder.record_feedback("7", "up", "answer-y", person="flooder")
    # Two hours ago: past the one-hour window the chart gives the exporter by default.
    old = rec.voters_key("bb", "7", "down", int((time.time() - 7200) // rec.VOTER_BUCKET_SECONDS))
    redis.Redis.from_url(redis_url).pfadd(old, "long-ago")
    registry = CollectorRegistry()
    create_app(settings, registry=registry)
    value = registry.get_sample_value
    assert value("bigbertha_feedback_total", {**CHAT, "rating": "down"}) == 101
    assert value("bigbertha_feedback_voters", {**CHAT, "rating": "down"}) == 2
    assert value("bigbertha_feedback_voters", {**CHAT, "rating": "up"}) == 1
    assert recorder.voters("7") == 2  # since the version first answered, either rating


def test_scrape_parses_with_the_right_types_in_both_formats(settings: Settings):
    drive(settings)
    client = create_app(settings).test_client()
    text = client.get("/metrics")
    assert text.status_code == 200
    assert text.content_type.startswith("text/plain; version=0.0.4")
    types = {f.name: f.type for f in text_string_to_metric_families(text.get_data(as_text=True))}
    expected = {
        "bigbertha_chat_requests": "counter",
        "bigbertha_chat_errors": "counter",
        "bigbertha_chat_latency_seconds": "histogram",
        "bigbertha_chat_ttft_seconds": "histogram",
        "bigbertha_chat_tokens": "counter",
        "bigbertha_feedback": "counter",
        "bigbertha_retrieval_score": "histogram",
        "bigbertha_retrieval_empty": "counter",
        "bigbertha_model_info": "gauge",
        "bigbertha_retrain_runs": "counter",
        "bigbertha_promotions": "counter",
        "bigbertha_exporter_redis_up": "gauge",
        "bigbertha_telemetry_dropped": "counter",
        "process_cpu_seconds": "counter",
    }
    assert {name: types.get(name) for name in expected} == expected

    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.content_type.startswith("application/openmetrics-text")
    body = om.get_data(as_text=True)
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(body)}
    assert families["bigbertha_chat_latency_seconds"].type == "histogram"
    assert families["bigbertha_feedback"].type == "counter"


def test_foreign_fields_and_old_serving_versions_are_ignored(settings: Settings):
    drive(settings)
    raw = redis.Redis.from_url(settings.redis.url.get_secret_value())  # type: ignore[union-attr]
    raw.hset(METRICS_KEY, "not json", 3)
    raw.hset(METRICS_KEY, field("bigbertha_unknown_total", "x"), 1)
    raw.hset(METRICS_KEY, field("bigbertha_chat_requests_total", "too-few-labels"), 1)
    raw.hset(METRICS_KEY, json.dumps(["bigbertha_chat_requests_total", "bb", 7]), 5)
    raw.hset(METRICS_KEY, field("bigbertha_chat_latency_seconds_bucket", "bb", "7"), 2)
    raw.hset(METRICS_KEY, field("bigbertha_chat_latency_seconds_bucket", "bb", "7", "x"), 2)
    raw.hset(METRICS_KEY, json.dumps(["bigbertha_chat_latency_seconds_bucket"]), 2)
    raw.hset(METRICS_KEY, field("bigbertha_chat_requests_total", "bb", "7", "x"), "NaN?")
    raw.hset(SERVING_KEY, field("bb", "6"), time.time() - 3600)  # replaced an hour ago
    raw.hset(SERVING_KEY, field("bb", "8"), time.time() - 60)  # still answering (rollout)
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    assert registry.get_sample_value("bigbertha_chat_requests_total", CHAT) == 4
    assert registry.get_sample_value("bigbertha_chat_latency_seconds_count", CHAT) == 4
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert len(list(text_string_to_metric_families(text))) > 10  # still a valid exposition
    info = {"model": "bb"}
    assert registry.get_sample_value("bigbertha_model_info", {**info, "model_version": "6"}) is None
    assert registry.get_sample_value("bigbertha_model_info", {**info, "model_version": "7"}) == 1
    assert registry.get_sample_value("bigbertha_model_info", {**info, "model_version": "8"}) == 1


def test_scrape_is_two_round_trips(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """The hashes in one, then every serving version's distinct voters in one more."""
    drive(settings)
    registry = CollectorRegistry()
    create_app(settings, registry=registry)
    registry.get_sample_value("bigbertha_exporter_redis_up")  # connect once
    sends: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sends.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)
    scrape = [s for metric in registry.collect() for s in metric.samples]  # all of it
    assert len(sends) == 2
    voters = [s for s in scrape if s.name == "bigbertha_feedback_voters"]
    assert {s.labels["rating"] for s in voters} == {"up", "down"}


def test_exporter_needs_a_redis_url(clean_env: object):
    with pytest.raises(ConfigError, match="redis.url is not set.*BIGBERTHA_REDIS__URL"):
        create_app(load())
    with pytest.raises(ConfigError, match="redis.url is not set"):
        create_app(load(overrides={"redis": {"url": ""}}))
    with pytest.raises(ConfigError, match="invalid setting redis.url"):
        create_app(load(overrides={"redis": {"url": "localhost:6379"}}))


def test_redis_hung_then_stopped_mid_test_still_answers(services: ServiceManager):
    own = services.redis()
    settings = load(
        overrides={
            "redis": {"url": own.extra["url"]},
            "mlflow": {"model_name": "bb"},
            "exporter": {"redis_timeout_seconds": 0.3},
        }
    )
    drive(settings)
    client = create_app(settings).test_client()
    assert json.loads(client.get("/healthz").data) == {"status": "ok", "redis": "up"}
    assert "bigbertha_exporter_redis_up 1.0" in client.get("/metrics").get_data(as_text=True)

    os.kill(own.pid, signal.SIGSTOP)  # hung: connections open, nothing answers
    try:
        started = time.perf_counter()
        hung = client.get("/metrics").get_data(as_text=True)
        scrape_s = time.perf_counter() - started
        started = time.perf_counter()
        health = client.get("/healthz")
        health_s = time.perf_counter() - started
    finally:
        os.kill(own.pid, signal.SIGCONT)
    assert "bigbertha_exporter_redis_up 0.0" in hung and scrape_s < 1.0
    # Within the kubelet's default 1 s probe timeout: a slow Redis never restarts the exporter.
    assert health.status_code == 200 and health_s < 0.5
    assert json.loads(health.data)["redis"] == "down"

    own.stop()
    started = time.perf_counter()
    scrape = client.get("/metrics")
    elapsed = time.perf_counter() - started
    text = scrape.get_data(as_text=True)
    assert scrape.status_code == 200 and elapsed < 1.0
    assert "bigbertha_exporter_redis_up 0.0" in text
    # No stale telemetry: the chat series are absent, not frozen at their last value.
    assert "bigbertha_chat_requests_total{" not in text
    health = client.get("/healthz")
    assert health.status_code == 200  # liveness: restarting the exporter would not help
    assert json.loads(health.data)["redis"] == "down"


def test_waitress_serves_metrics_over_http(settings: Settings):
    drive(settings)
    port = free_port()
    exporter = settings.exporter.model_copy(update={"port": port})
    server = make_server(settings.model_copy(update={"exporter": exporter}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Server"] == "bigbertha-exporter"
            body = response.read().decode()
        assert 'bigbertha_chat_requests_total{model="bb",model_version="7"} 4.0' in body
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert missing.value.code == 404
        # A scrape has no body: waitress' own limit refuses one before Flask sees it.
        post = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x" * 2048)
        with pytest.raises(urllib.error.HTTPError) as too_large:
            urllib.request.urlopen(post, timeout=5)
        assert too_large.value.code == 413
    finally:
        server.close()
        thread.join(5)


# --- garbage in Redis: every good series survives, both formats still parse ------------------

REQUESTS_9 = field("bigbertha_chat_requests_total", "bb", "9")
# kind -> (hash, field, value, (key label, reason label) it is counted under)
GARBAGE: dict[str, tuple[str, bytes, bytes, tuple[str, str]]] = {
    "field not UTF-8": (
        METRICS_KEY,
        b'["bigbertha_chat_requests_total","bb","\xff\xfe"]',
        b"1",
        ("metrics", "encoding"),
    ),
    "label a lone surrogate": (
        METRICS_KEY,
        b'["bigbertha_chat_requests_total","bb","\\ud800"]',
        b"1",
        ("metrics", "encoding"),
    ),
    "field not JSON": (METRICS_KEY, b"not json", b"3", ("metrics", "format")),
    "field nested 100000 deep": (
        METRICS_KEY,
        b"[" * 100_000 + b"]" * 100_000,
        b"1",
        ("metrics", "format"),
    ),
    "label not a string": (
        METRICS_KEY,
        b'["bigbertha_chat_requests_total","bb",9]',
        b"1",
        ("metrics", "format"),
    ),
    "bucket bound NaN": (
        METRICS_KEY,
        field("bigbertha_chat_latency_seconds_bucket", "bb", "9", "NaN").encode(),
        b"1",
        ("metrics", "format"),
    ),
    "unknown sample": (
        METRICS_KEY,
        field("bigbertha_unknown_total", "x").encode(),
        b"1",
        ("metrics", "unknown"),
    ),
    "value not UTF-8": (METRICS_KEY, REQUESTS_9.encode(), b"\xff\xfe", ("metrics", "value")),
    "value unparsable": (METRICS_KEY, REQUESTS_9.encode(), b"12abc", ("metrics", "value")),
    "counter NaN": (METRICS_KEY, REQUESTS_9.encode(), b"nan", ("metrics", "value")),
    "counter +Inf": (METRICS_KEY, REQUESTS_9.encode(), b"inf", ("metrics", "value")),
    "counter negative": (METRICS_KEY, REQUESTS_9.encode(), b"-5", ("metrics", "value")),
    "histogram sum negative": (
        METRICS_KEY,
        field("bigbertha_chat_latency_seconds_sum", "bb", "9").encode(),
        b"-1.5",
        ("metrics", "value"),
    ),
    "bucket count NaN": (
        METRICS_KEY,
        field("bigbertha_chat_latency_seconds_bucket", "bb", "9", "0.5").encode(),
        b"nan",
        ("metrics", "value"),
    ),
    "bucket count fractional": (
        METRICS_KEY,
        field("bigbertha_chat_latency_seconds_bucket", "bb", "9", "1.0").encode(),
        b"1.5",
        ("metrics", "value"),
    ),
    "serving field not UTF-8": (SERVING_KEY, b'["bb","\xff"]', b"1", ("serving", "encoding")),
    "serving time NaN": (
        SERVING_KEY,
        field("bb", "9").encode(),
        b"nan",
        ("serving", "value"),
    ),
}


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exported sample but the skipped-fields gauge: (name, labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if family.name != "bigbertha_exporter_skipped_fields"
    }


def assert_parses_everywhere(app: Any, promtool: str) -> None:
    """Prometheus text (prometheus_client's parser and promtool) and OpenMetrics both parse."""
    client = app.test_client()
    text = client.get("/metrics").get_data(as_text=True)
    assert len(list(text_string_to_metric_families(text))) > 10
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.content_type.startswith("application/openmetrics-text")
    assert len(list(openmetrics_families(om.get_data(as_text=True)))) > 10


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_each_kind_of_garbage_is_skipped_and_counted(settings: Settings, kind: str):
    promtool = require_binary("promtool")
    drive(settings)
    raw = redis.Redis.from_url(settings.redis.url.get_secret_value())  # type: ignore[union-attr]
    baseline_registry = CollectorRegistry()
    create_app(settings, registry=baseline_registry)
    baseline = samples(baseline_registry)

    key, name, value, (key_label, reason) = GARBAGE[kind]
    raw.hset(key, name, value)
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    assert registry.get_sample_value("bigbertha_exporter_redis_up") == 1
    after = samples(registry)
    assert {k: after.get(k) for k in baseline} == baseline  # every good series, same value
    skipped = {"key": key_label, "reason": reason}
    assert registry.get_sample_value("bigbertha_exporter_skipped_fields", skipped) == 1
    assert json.loads(app.test_client().get("/healthz").data)["redis"] == "up"
    assert_parses_everywhere(app, promtool)


@pytest.mark.parametrize("key", [METRICS_KEY, SERVING_KEY])
def test_a_key_of_the_wrong_type_is_skipped_not_redis_down(settings: Settings, key: str):
    drive(settings)
    raw = redis.Redis.from_url(settings.redis.url.get_secret_value())  # type: ignore[union-attr]
    raw.delete(key)
    raw.rpush(key, "not", "a", "hash")
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    value = registry.get_sample_value
    assert value("bigbertha_exporter_redis_up") == 1
    label = "metrics" if key == METRICS_KEY else "serving"
    assert value("bigbertha_exporter_skipped_fields", {"key": label, "reason": "wrong_type"}) == 1
    if key == METRICS_KEY:  # the serving hash still says what serves
        assert value("bigbertha_model_info", CHAT) == 1
    else:  # every stored series is still there
        assert value("bigbertha_chat_requests_total", CHAT) == 4
        assert value("bigbertha_chat_latency_seconds_count", CHAT) == 4
    assert json.loads(app.test_client().get("/healthz").data)["redis"] == "up"
    assert_parses_everywhere(app, require_binary("promtool"))


def test_invalid_values_are_refused_at_write(settings: Settings):
    recorder = Recorder.from_settings(settings)
    recorder.record_answer(
        "7",
        latency_s=-1.0,
        ttft_s=float("nan"),
        prompt_tokens=-3,
        completion_tokens=float("inf"),  # type: ignore[arg-type]
        scores=[-0.2, float("-inf"), 0.5],
        context_chunks=3,
    )
    registry = CollectorRegistry()
    create_app(settings, registry=registry)
    value = registry.get_sample_value
    assert value("bigbertha_chat_requests_total", CHAT) == 1  # the answer itself counts
    assert value("bigbertha_chat_latency_seconds_count", CHAT) is None  # never observed
    assert value("bigbertha_chat_ttft_seconds_count", CHAT) is None
    assert value("bigbertha_chat_tokens_total", {**CHAT, "kind": "prompt"}) == 0
    assert value("bigbertha_chat_tokens_total", {**CHAT, "kind": "completion"}) == 0
    # A negative similarity is observed as 0 (the lowest bucket); -inf is left out.
    assert value("bigbertha_retrieval_score_count", CHAT) == 2
    assert value("bigbertha_retrieval_score_sum", CHAT) == pytest.approx(0.5)
    assert value("bigbertha_exporter_skipped_fields", {"key": "metrics", "reason": "value"}) == 0


@pytest.mark.slow
def test_prometheus_scrapes_all_garbage_at_once_in_openmetrics(
    settings: Settings, services: ServiceManager
):
    """A real Prometheus negotiates OpenMetrics; one bad field must not fail its scrape."""
    drive(settings)
    raw = redis.Redis.from_url(settings.redis.url.get_secret_value())  # type: ignore[union-attr]
    for key, name, value, _ in GARBAGE.values():
        raw.hset(key, name, value)
    # Several kinds share one field (the last write wins): count fields, not kinds.
    bad_values = len({n for k, n, _, why in GARBAGE.values() if why == ("metrics", "value")})
    port = free_port()
    exporter = settings.exporter.model_copy(update={"port": port})
    server = make_server(settings.model_copy(update={"exporter": exporter}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    config = (
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: exporter\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    prometheus = services.prometheus(config)
    try:
        query = f"http://127.0.0.1:{prometheus.port}/api/v1/query?query="
        deadline = time.monotonic() + 60
        results: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(query + "up", timeout=5) as response:
                up = json.load(response)["data"]["result"]
            if up:
                break
            time.sleep(0.5)
        assert up and up[0]["value"][1] == "1", up  # the scrape parsed
        for metric in (
            'bigbertha_chat_requests_total{model_version="7"}',
            "bigbertha_exporter_redis_up",
            'bigbertha_exporter_skipped_fields{key="metrics",reason="value"}',
        ):
            url = query + urllib.parse.quote(metric)
            with urllib.request.urlopen(url, timeout=5) as response:
                results[metric] = json.load(response)["data"]["result"][0]["value"][1]
        assert results == {
            'bigbertha_chat_requests_total{model_version="7"}': "4",
            "bigbertha_exporter_redis_up": "1",
            'bigbertha_exporter_skipped_fields{key="metrics",reason="value"}': str(bad_values),
        }
    finally:
        prometheus.stop()
        server.close()
        thread.join(5)


def test_a_challenger_is_exported_while_its_canary_runs(settings: Settings):
    recorder = Recorder.from_settings(settings)
    recorder.set_serving_model("7")
    registry = CollectorRegistry()
    create_app(settings, registry=registry)
    value = registry.get_sample_value
    started = {"model": "bb", "model_version": "8"}
    assert value("bigbertha_canary_started_timestamp_seconds", started) is None

    recorder.set_canary("8", 1_790_000_000.5)
    assert value("bigbertha_canary_started_timestamp_seconds", started) == 1_790_000_000.5
    # Its vote counters exist at zero before it answers, so its first vote is an increase.
    assert value("bigbertha_feedback_total", {**started, "rating": "down"}) == 0
    assert value("bigbertha_feedback_total", {**CHAT, "rating": "up"}) == 0
    recorder.record_promotion("challenger")
    assert value("bigbertha_promotions_total", {"decision": "challenger"}) == 1
    assert value("bigbertha_promotions_total", {"decision": "retired"}) == 0

    recorder.end_canary("8")
    recorder.record_promotion("retired")
    assert value("bigbertha_canary_started_timestamp_seconds", started) is None
    assert value("bigbertha_promotions_total", {"decision": "retired"}) == 1
    assert recorder.dropped == 0
