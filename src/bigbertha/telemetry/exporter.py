"""The Prometheus exporter: chatbot and pipeline telemetry from Redis on `/metrics`.

    bigbertha exporter            # serves exporter.host:exporter.port (waitress)

`TelemetryCollector` reads the recorder's Redis hashes in one round trip per scrape and yields
real counter, histogram and gauge families (prometheus_client writes the exposition text, and
negotiates OpenMetrics when the scraper asks for it). With Redis down the exporter still
answers, with `bigbertha_exporter_redis_up 0` and no stale telemetry. `/healthz` is the liveness
probe: it says whether Redis answered but stays 200, since restarting the exporter would not
bring Redis back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
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
    """Turns the recorder's Redis hashes into metric families on every scrape."""

    def __init__(self, client: redis.Redis, serving_window: float = SERVING_WINDOW_SECONDS):
        self._client = client
        self._serving_window = serving_window
        self._warn = RateLimitedLogger(log, interval=60.0)
        self._specs = {}
        for spec in recorder.STORED:
            if spec.kind == "histogram":
                self._specs[spec.name + "_bucket"] = spec
                self._specs[spec.name + "_sum"] = spec
            else:
                self._specs[spec.name] = spec

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering never touches Redis.
        for spec in (*recorder.STORED, recorder.MODEL_INFO, recorder.REDIS_UP):
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(recorder.REDIS_UP.name, recorder.REDIS_UP.doc)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(recorder.METRICS_KEY)
            pipe.hgetall(recorder.SERVING_KEY)
            stored, serving = pipe.execute()
        except Exception as exc:  # any client failure means "Redis down" to the scraper
            self._warn.warning("cannot read telemetry from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        seen = _serving(serving)
        yield from self._families(stored, list(seen))
        yield self._model_info(seen)

    def _families(
        self, stored: dict[str, str], versions: list[tuple[str, ...]]
    ) -> Iterator[Metric]:
        # spec -> label values -> (bucket bound or sample) -> value
        values: dict[recorder.MetricSpec, dict[tuple[str, ...], dict[Any, float]]] = {
            spec: defaultdict(dict) for spec in recorder.STORED
        }
        # Counters start at 0 for every known label set, so the first event is an increase
        # that rate() and increase() can see (a series born at 1 would hide it).
        for spec, labels in _zero_series(versions):
            values[spec][labels]["value"] = 0.0
        for raw_field, raw_value in stored.items():
            try:
                sample, *label_values = json.loads(raw_field)
                spec = self._specs[sample]
                value = float(raw_value)
            except (ValueError, KeyError, TypeError):
                continue  # a field from another version of the recorder: not ours to export
            key: Any = "value"
            if spec.kind == "histogram":
                key = "sum" if sample.endswith("_sum") else None
                if key is None and label_values:
                    *label_values, bound = label_values
                    key = _parse_bound(bound, spec.buckets)
            if key is None or len(label_values) != len(spec.labels):
                continue
            if not all(isinstance(v, str) for v in label_values):
                continue
            target = values[spec][tuple(label_values)]
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


def _serving(serving: dict[str, str]) -> dict[tuple[str, ...], float]:
    """(model, model_version) -> unix time it last served."""
    seen: dict[tuple[str, ...], float] = {}
    for raw_field, raw_value in serving.items():
        try:
            labels = tuple(str(v) for v in json.loads(raw_field))
            last = float(raw_value)
        except (ValueError, TypeError):
            continue
        if len(labels) == len(recorder.CHAT_LABELS):
            seen[labels] = last
    return seen


def _zero_series(
    versions: list[tuple[str, ...]],
) -> Iterator[tuple[recorder.MetricSpec, tuple[str, ...]]]:
    yield recorder.DROPPED, ()
    for result in recorder.RETRAIN_RESULTS:
        yield recorder.RETRAIN_RUNS, (result,)
    for decision in recorder.PROMOTION_DECISIONS:
        yield recorder.PROMOTIONS, (decision,)
    for labels in versions:
        for spec in (recorder.REQUESTS, recorder.ERRORS, recorder.RETRIEVAL_EMPTY):
            yield spec, labels
        for kind in ("prompt", "completion"):
            yield recorder.TOKENS, (*labels, kind)
        for rating in recorder.RATINGS:
            yield recorder.FEEDBACK, (*labels, rating)


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
    client = recorder.redis_client(url, settings.exporter.redis_timeout_seconds)
    # The health check answers within redis.timeout_seconds, well inside a kubelet probe's 1s.
    probe = recorder.redis_client(url, settings.redis.timeout_seconds)
    if registry is None:
        registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
    registry.register(TelemetryCollector(client))

    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            redis_ok = bool(probe.ping())
        except Exception:  # reported, not raised: the probe is about this process
            redis_ok = False
        return jsonify(status="ok", redis="up" if redis_ok else "down")

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
    )


def serve(settings: Settings) -> None:
    """Serve until the process is stopped (the `bigbertha exporter` subcommand)."""
    server = make_server(settings)
    log.info(
        "exporter listening",
        extra={"host": settings.exporter.host, "port": server.effective_port},
    )
    server.run()
