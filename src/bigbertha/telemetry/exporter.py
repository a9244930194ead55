"""The Prometheus exporter: chatbot and pipeline telemetry from Redis on `/metrics`.

    bigbertha exporter            # serves exporter.host:exporter.port (waitress)

`TelemetryCollector` reads the recorder's Redis hashes in one round trip per scrape and yields
real counter, histogram and gauge families (prometheus_client writes the exposition text, and
negotiates OpenMetrics when the scraper asks for it). With Redis down the exporter still
answers, with `bigbertha_exporter_redis_up 0` and no stale telemetry; a field it cannot use is
left out and counted in `bigbertha_exporter_skipped_fields`, never taken for an outage.
`/healthz` is the liveness probe: it says whether Redis answered (by the same rule as
redis_up) but stays 200, since restarting the exporter would not bring Redis back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bigbertha.core.errors import ConfigError
from bigbertha.core.logs import RateLimitedLogger
from bigbertha.telemetry import recorder

if TYPE_CHECKING:
    import redis
    from flask import Flask

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

#: A version that answered or was marked serving this recently is exported in model_info.
SERVING_WINDOW_SECONDS = 600.0


class TelemetryCollector(Collector):
    """Turns the recorder's Redis hashes into metric families on every scrape.

    The hashes are read as bytes and every field is checked on its own: a field or key the
    exporter cannot use (invalid UTF-8, not a [sample, *labels] array, an unknown sample, a
    value that is not a finite number >= 0, a key of the wrong type) is left out and counted in
    `bigbertha_exporter_skipped_fields`; every other series is still exported. Only a failed
    connection (or a refused read) is "Redis down".
    """

    def __init__(
        self,
        client: redis.Redis,
        serving_window: float = SERVING_WINDOW_SECONDS,
        serving_versions_kept: int = recorder.SERVING_VERSIONS_KEPT,
        voters_window: float = 3600.0,
    ):
        self._client = client
        self._voters_window = voters_window
        self._kept = serving_versions_kept
        self._serving_window = serving_window
        self._warn = RateLimitedLogger(log, interval=60.0)
        self._skipped_warn = RateLimitedLogger(log, interval=600.0)
        self._specs = {}
        for spec in recorder.STORED:
            if spec.kind == "histogram":
                self._specs[spec.name + "_bucket"] = spec
                self._specs[spec.name + "_sum"] = spec
            else:
                self._specs[spec.name] = spec

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering never touches Redis.
        specs = (
            *recorder.STORED,
            recorder.MODEL_INFO,
            recorder.CANARY_STARTED,
            recorder.REDIS_UP,
            recorder.SKIPPED,
            recorder.VOTERS,
        )
        for spec in specs:
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(recorder.REDIS_UP.name, recorder.REDIS_UP.doc)
        try:
            replies = read_hashes(self._client)
        except RedisUnavailable as exc:
            self._warn.warning("cannot read telemetry from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        skipped: Counter[tuple[str, str]] = Counter()
        stored = _fields_of(replies[recorder.METRICS_KEY], "metrics", skipped)
        serving = _fields_of(replies[recorder.SERVING_KEY], "serving", skipped)
        canary = _fields_of(replies[recorder.CANARY_KEY], "canary", skipped)
        challengers = _serving(canary, skipped, "canary")
        # Bounded whatever the hash holds (the recorder's trim rule; issue 25 item 6).
        seen = recorder.kept_versions(_serving(serving, skipped), challengers, self._kept)
        # A challenger's series start at 0 with its canary, so its first vote is an increase.
        versions = sorted(seen.keys() | challengers.keys())
        yield from self._families(stored, versions, skipped)
        yield self._voters(versions)
        yield self._model_info(seen)
        yield _canary(challengers)
        yield _skipped_family(skipped)
        if skipped:
            self._skipped_warn.warning(
                "telemetry fields left out: %s",
                ", ".join(f"{key}/{reason}={n}" for (key, reason), n in sorted(skipped.items())),
            )

    def _families(
        self,
        stored: dict[str, bytes],
        versions: list[tuple[str, ...]],
        skipped: Counter[tuple[str, str]],
    ) -> Iterator[Metric]:
        # spec -> label values -> (bucket bound or sample) -> value
        values: dict[recorder.MetricSpec, dict[tuple[str, ...], dict[Any, float]]] = {
            spec: defaultdict(dict) for spec in recorder.STORED
        }
        # Counters start at 0 for every known label set, so the first event is an increase
        # that rate() and increase() can see (a series born at 1 would hide it).
        for spec, labels in _zero_series(versions):
            values[spec][labels]["value"] = 0.0
        for name, raw_value in stored.items():
            parsed = self._sample(name, raw_value)
            if isinstance(parsed, str):
                skipped["metrics", parsed] += 1
                continue
            spec, label_values, key, value = parsed
            target = values[spec][label_values]
            target[key] = target.get(key, 0.0) + value if spec.kind == "histogram" else value
        for spec, series in values.items():
            if spec.kind == "histogram":
                histogram = HistogramMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
                for labels, data in sorted(series.items()):
                    buckets = _cumulative(spec.buckets, data)
                    histogram.add_metric(labels, buckets, data.get("sum", 0.0))
                yield histogram
            else:
                family = _scalar_family(spec)
                for labels, data in sorted(series.items()):
                    family.add_metric(labels, data["value"])
                yield family

    def _sample(
        self, name: str, raw_value: bytes
    ) -> tuple[recorder.MetricSpec, tuple[str, ...], Any, float] | str:
        """(spec, label values, "value" | "sum" | bucket bound, value), or why it is skipped."""
        labels = _labels(name)
        if isinstance(labels, str):
            return labels
        sample, *label_values = labels
        spec = self._specs.get(sample)
        if spec is None:
            return "unknown"  # e.g. a field of another version of the recorder
        key: Any = "value"
        if spec.kind == "histogram":
            key = "sum" if sample.endswith("_sum") else None
            if key is None and label_values:
                *label_values, bound = label_values
                key = _parse_bound(bound, spec.buckets)
        if key is None or len(label_values) != len(spec.labels):
            return "format"
        value = _amount(raw_value)
        if value is None or (spec.kind == "histogram" and key != "sum" and not value.is_integer()):
            return "value"  # OpenMetrics rejects a whole scrape for one fractional bucket count
        return spec, tuple(label_values), key, value

    def _voters(self, versions: list[tuple[str, ...]]) -> Metric:
        """Distinct people per version and rating over the voters window: one PFCOUNT (a
        union of the window's buckets) each, in one round trip. Left empty when Redis fails
        now: no series is better than a zero that would read as nobody."""
        import redis

        family = _scalar_family(recorder.VOTERS)
        wanted = [(*labels, rating) for labels in versions for rating in recorder.RATINGS]
        if not wanted:
            return family
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for model, version, rating in wanted:
            pipe.pfcount(
                *recorder.voter_window_keys(model, version, rating, self._voters_window, now)
            )
        try:
            counts = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._warn.warning("cannot read the voters from Redis: %s", exc)
            return family
        for labels, count in zip(wanted, counts, strict=True):
            family.add_metric(list(labels), float(count))
        return family

    def _model_info(self, seen: dict[tuple[str, ...], float]) -> Metric:
        family = _scalar_family(recorder.MODEL_INFO)
        if seen:
            newest = max(seen.values())
            cutoff = time.time() - self._serving_window
            # The most recent version always counts (an idle chatbot still serves it); others
            # only while they answer, e.g. during a rolling update.
            for labels, last in sorted(seen.items()):
                if last == newest or last >= cutoff:
                    family.add_metric(list(labels), 1)
        return family


class RedisUnavailable(Exception):
    """Redis did not answer, or refused the read (authentication, ACL): redis_up is 0."""


def read_hashes(client: redis.Redis) -> dict[str, Any]:
    """The telemetry hashes in one round trip: key -> {field: value} bytes, or None when the
    key holds another type. Raises RedisUnavailable only when Redis itself failed."""
    import redis

    keys = (recorder.METRICS_KEY, recorder.SERVING_KEY, recorder.CANARY_KEY)
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        # Per-command errors come back as values: one wrong-typed key is not an outage.
        results = pipe.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
    out: dict[str, Any] = {}
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, redis.ResponseError) and str(result).startswith("WRONGTYPE"):
            out[key] = None
        elif isinstance(result, Exception):
            raise RedisUnavailable(f"{key}: {result}")
        else:
            out[key] = result
    return out


def ping(client: redis.Redis) -> bool:
    """Whether Redis answers, by the same rule as redis_up (what /healthz reports)."""
    try:
        read_hashes(client)
    except RedisUnavailable:
        return False
    return True


def _fields_of(
    reply: dict[bytes, bytes] | None, key: str, skipped: Counter[tuple[str, str]]
) -> dict[str, bytes]:
    """A hash reply with its field names decoded; a key of another type counts as skipped."""
    if reply is None:
        skipped[key, "wrong_type"] += 1
        return {}
    fields: dict[str, bytes] = {}
    for raw_name, raw_value in reply.items():
        try:
            fields[raw_name.decode("utf-8")] = raw_value
        except UnicodeDecodeError:
            skipped[key, "encoding"] += 1
    return fields


def _labels(name: str) -> list[str] | str:
    """A field's JSON array of strings (sample, *label values), or why it cannot be used."""
    try:
        parsed = json.loads(name)
    except (ValueError, RecursionError):
        return "format"
    if not isinstance(parsed, list) or not parsed:
        return "format"
    if not all(isinstance(part, str) for part in parsed):
        return "format"
    try:
        for part in parsed:  # a "\ud800" escape decodes to a lone surrogate: not UTF-8
            part.encode("utf-8")
    except UnicodeEncodeError:
        return "encoding"
    return parsed


def _amount(raw: bytes) -> float | None:
    """A stored counter, bucket or sum: a finite number >= 0 written in ASCII, else None."""
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if recorder.valid_amount(value) else None


def _serving(
    serving: dict[str, bytes], skipped: Counter[tuple[str, str]], key: str = "serving"
) -> dict[tuple[str, ...], float]:
    """(model, model_version) -> unix time it last served (the canary hash: since when it is
    the challenger); unusable fields are counted under `key`."""
    seen: dict[tuple[str, ...], float] = {}
    for raw_field, raw_value in serving.items():
        labels = _labels(raw_field)
        if isinstance(labels, str) or len(labels) != len(recorder.CHAT_LABELS):
            skipped[key, labels if isinstance(labels, str) else "format"] += 1
            continue
        last = _amount(raw_value)
        if last is None:
            skipped[key, "value"] += 1
            continue
        seen[tuple(labels)] = last
    return seen


def _skipped_family(skipped: Counter[tuple[str, str]]) -> Metric:
    family = GaugeMetricFamily(
        recorder.SKIPPED.name, recorder.SKIPPED.doc, labels=list(recorder.SKIPPED.labels)
    )
    for key in ("metrics", "serving", "canary"):
        for reason in recorder.SKIP_REASONS:
            family.add_metric([key, reason], skipped[key, reason])
    return family


def _canary(challengers: dict[tuple[str, ...], float]) -> Metric:
    """The challenger versions and when each started (the stuck-canary alert reads it)."""
    family = _scalar_family(recorder.CANARY_STARTED)
    for labels, started in sorted(challengers.items()):
        family.add_metric(list(labels), started)
    return family


def _zero_series(
    versions: list[tuple[str, ...]],
) -> Iterator[tuple[recorder.MetricSpec, tuple[str, ...]]]:
    yield recorder.DROPPED, ()
    for result in recorder.RETRAIN_RESULTS:
        yield recorder.RETRAIN_RUNS, (result,)
    for decision in recorder.PROMOTION_DECISIONS:
        yield recorder.PROMOTIONS, (decision,)
    for reason in recorder.REFUSAL_REASONS:
        yield recorder.REFUSED, (reason,)
    for outcome in recorder.TRAINING_ROW_OUTCOMES:
        yield recorder.TRAINING_ROWS, (outcome,)
    for labels in versions:
        for spec in (recorder.REQUESTS, recorder.ERRORS, recorder.RETRIEVAL_EMPTY):
            yield spec, labels
        for kind in ("prompt", "completion"):
            yield recorder.TOKENS, (*labels, kind)
        for rating in recorder.RATINGS:
            yield recorder.FEEDBACK, (*labels, rating)
            yield recorder.FEEDBACK_REPLACED, (*labels, rating)


def _family(spec: recorder.MetricSpec) -> Metric:
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
    return _scalar_family(spec)


def _scalar_family(spec: recorder.MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
    return GaugeMetricFamily(spec.name, spec.doc, labels=list(spec.labels))


def _parse_bound(text: Any, buckets: tuple[float, ...]) -> float | None:
    """The configured bound a stored `le` belongs to (bounds changed across versions fold up)."""
    try:
        bound = math.inf if text == "+Inf" else float(text)
    except (ValueError, TypeError):
        return None
    if math.isnan(bound) or (math.isinf(bound) and text != "+Inf"):
        return None
    return recorder.bucket_for(buckets, bound)


def _cumulative(buckets: tuple[float, ...], data: dict[Any, float]) -> list[tuple[str, float]]:
    total = 0.0
    out = []
    for bound in buckets:
        total += data.get(bound, 0.0)
        out.append((recorder.bound_label(bound), total))
    return out


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> Flask:
    """The exporter's Flask app: `/metrics` from `registry` (a fresh one by default), `/healthz`.

    The telemetry collector is registered into `registry`; a fresh default registry also gets
    the process and platform collectors.
    """
    from flask import Flask, jsonify
    from prometheus_client import platform_collector, process_collector
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    if settings.redis.url is None or not settings.redis.url.get_secret_value():
        raise ConfigError(
            "redis.url is not set: the exporter reads telemetry from Redis. "
            "Set BIGBERTHA_REDIS__URL (redis://[:password@]host:port/db)."
        )
    url = settings.redis.url.get_secret_value()
    client = recorder.redis_client(url, settings.exporter.redis_timeout_seconds, decode=False)
    # The health check answers within redis.timeout_seconds, well inside a kubelet probe's 1s,
    # and by the same rule as redis_up (a read of both hashes), so the two always agree.
    probe = recorder.redis_client(url, settings.redis.timeout_seconds, decode=False)
    if registry is None:
        registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
    registry.register(
        TelemetryCollector(
            client,
            serving_versions_kept=settings.redis.serving_versions_kept,
            voters_window=settings.exporter.voters_window_seconds,
        )
    )

    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Any:
        # Reported, not raised: the probe is about this process.
        return jsonify(status="ok", redis="up" if ping(probe) else "down")

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/metrics": make_wsgi_app(registry)}
    )
    return app


def make_server(settings: Settings, app: Flask | None = None) -> Any:
    """A waitress server bound to exporter.host:exporter.port (port 0 picks a free one)."""
    from waitress import create_server

    return create_server(
        app or create_app(settings),
        host=settings.exporter.host,
        port=settings.exporter.port,
        threads=4,
        ident="bigbertha-exporter",
        clear_untrusted_proxy_headers=True,
        # waitress' own limits: a scrape is a GET with a few headers; an idle or trickling
        # connection is closed after 60 s without traffic (Prometheus reconnects).
        max_request_header_size=65536,
        max_request_body_size=1024,
        channel_timeout=60,
    )


def serve(settings: Settings) -> None:
    """Serve until the process is stopped (the `bigbertha exporter` subcommand)."""
    server = make_server(settings)
    log.info(
        "exporter listening",
        extra={"host": settings.exporter.host, "port": server.effective_port},
    )
    server.run()
