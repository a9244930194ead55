"""Benchmark: telemetry recording overhead per answer and /metrics latency.

    .venv/bin/python bench/telemetry.py [--answers 100000] [--versions 10] [--quick]

Starts its own redis-server. Records `--answers` answers spread over `--versions` model versions
through `Recorder` (one pipelined round trip per answer into one hash), and scrapes the exporter's
`/metrics` after 1,000 answers and after all of them. The baseline, measured in the same run, is
the seed's design: one Redis key per series, written with one command per key and read with one
GET per key. (The baseline's recording is timed on a sample of answers, since its per-answer cost
does not depend on how many came before; its scrape reads as many keys as there are series.)
The last line printed is one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric

from bigbertha.core.settings import load
from bigbertha.local.stack import ServiceManager
from bigbertha.telemetry.exporter import TelemetryCollector, create_app
from bigbertha.telemetry.recorder import METRICS_KEY, SERVING_KEY, Recorder

SCRAPES = 30


def fake_answer(rng: random.Random, versions: int) -> tuple[str, dict[str, Any]]:
    return str(rng.randrange(versions) + 1), {
        "latency_s": rng.lognormvariate(0.5, 0.6),
        "ttft_s": rng.lognormvariate(-1.5, 0.5),
        "prompt_tokens": rng.randint(200, 1500),
        "completion_tokens": rng.randint(20, 300),
        "scores": [rng.uniform(0.1, 0.9) for _ in range(4)],
        "context_chunks": 0 if rng.random() < 0.05 else 4,
        "error": rng.random() < 0.01,
    }


class SeedRecorder(Recorder):
    """The baseline writer: the same aggregates, one key per series, one command per key."""

    def __init__(self, client: redis.Redis, model: str) -> None:
        super().__init__(None, model)
        self._seed = client

    def _write(self, incr: dict[str, float], serving: tuple[str, ...] | None = None) -> None:
        # Recorder's field layout, so both designs store exactly the same numbers.
        for name, amount in incr.items():
            if isinstance(amount, float):
                self._seed.incrbyfloat("seed:" + name, amount)
            else:
                self._seed.incrby("seed:" + name, int(amount))


class SeedCollector(TelemetryCollector):
    """The baseline reader: one GET per known key, then the same families as the exporter."""

    def __init__(self, client: redis.Redis, keys: list[str]) -> None:
        super().__init__(client)
        self._keys = keys

    def collect(self) -> Iterator[Metric]:
        stored = {}
        for key in self._keys:
            value = self._client.get(key)
            if value is not None:
                stored[key.removeprefix("seed:")] = value
        serving = self._client.hgetall(SERVING_KEY)
        # The exporter's own families, fed what the seed design read (no field is skipped).
        yield from self._families(stored, list(_versions(serving)), Counter())


def _versions(serving: dict[Any, Any]) -> Iterator[tuple[str, ...]]:
    for raw in serving:
        yield tuple(json.loads(raw))


def scrape_ms(apps: dict[str, Any]) -> dict[str, float]:
    """Median /metrics time of each app, scraped in turn so machine load hits them alike."""
    timings: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(SCRAPES):
        for name, app in apps.items():
            started = time.perf_counter()
            response = app.get("/metrics")
            timings[name].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    return {name: statistics.median(values) for name, values in timings.items()}


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def timed(call: Any, version: str, kwargs: dict[str, Any], into: list[float]) -> None:
    started = time.perf_counter_ns()
    call(version, **kwargs)
    into.append((time.perf_counter_ns() - started) / 1000)


def run(answers: int, versions: int, baseline_sample: int) -> dict[str, Any]:
    rng = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        manager = ServiceManager(Path(tmp))
        try:
            url = str(manager.redis().extra["url"]).rsplit("/", 1)[0]
            # Database 0 gets all the answers, database 1 only the first 1,000: scraping both
            # in turn shows whether scrape time grows with the number of answers.
            # A 1 s write timeout instead of the chat's 50 ms: on a loaded machine the short one
            # drops writes (counted below), and dropped calls would flatter the median.
            big = load(overrides={"redis": {"url": url + "/0", "timeout_seconds": 1.0}})
            small = load(overrides={"redis": {"url": url + "/1", "timeout_seconds": 1.0}})
            client = redis.Redis.from_url(url + "/0", decode_responses=True)
            ours, few = Recorder.from_settings(big), Recorder.from_settings(small)
            seed = SeedRecorder(client, big.mlflow.model_name)
            for recorder in (ours, few):
                for v in range(1, versions + 1):
                    recorder.set_serving_model(str(v))
                    recorder.record_feedback(str(v), "up")
                    recorder.record_feedback(str(v), "down")

            timings: list[float] = []
            seed_timings: list[float] = []
            for i in range(answers):
                version, kwargs = fake_answer(rng, versions)
                if i < 1000:
                    few.record_answer(version, **kwargs)
                timed(ours.record_answer, version, kwargs, timings)
                if i < baseline_sample:  # interleaved, so load drift hits both alike
                    timed(seed.record_answer, version, kwargs, seed_timings)
            print(
                f"ours: record_answer median {statistics.median(timings):.1f} us, "
                f"p99 {p99(timings):.1f} us over {answers:,} answers"
            )
            print(
                f"seed: one command per key median {statistics.median(seed_timings):.1f} us "
                f"(p99 {p99(seed_timings):.1f} us) over {baseline_sample:,} answers"
            )

            # The baseline reads every series ours holds, one GET each.
            for name, value in client.hgetall(METRICS_KEY).items():
                client.set("seed:" + name, value)
            keys = sorted(client.scan_iter("seed:*", count=1000))
            registry = CollectorRegistry()
            # Raw bytes, as the exporter reads them (its parser takes the wire's bytes).
            registry.register(SeedCollector(redis.Redis.from_url(url + "/0"), keys))
            seed_app = Flask("seed")
            seed_app.wsgi_app = make_wsgi_app(registry)  # type: ignore[method-assign]
            scrapes = scrape_ms(
                {
                    "few": create_app(small, registry=CollectorRegistry()).test_client(),
                    "all": create_app(big, registry=CollectorRegistry()).test_client(),
                    "seed": seed_app.test_client(),
                }
            )
            fields = client.hlen(METRICS_KEY)
            dropped = ours.dropped  # writes that hit the timeout: should be 0
            few_fields = redis.Redis.from_url(url + "/1").hlen(METRICS_KEY)
            print(
                f"ours: /metrics after 1,000 answers: {scrapes['few']:.2f} ms ({few_fields} fields)"
            )
            print(
                f"ours: /metrics after {answers:,} answers: {scrapes['all']:.2f} ms "
                f"({fields} fields)"
            )
            print(
                f"seed: /metrics with one GET per key ({len(keys)} keys): {scrapes['seed']:.2f} ms"
            )
        finally:
            manager.stop_all()

    record_median = statistics.median(timings)
    seed_median = statistics.median(seed_timings)
    return {
        "answers": answers,
        "model_versions": versions,
        "record_median_us": round(record_median, 1),
        "record_p99_us": round(p99(timings), 1),
        "baseline_record_median_us": round(seed_median, 1),
        "record_speedup_vs_baseline": round(seed_median / record_median, 2),
        "scrape_ms_after_1k": round(scrapes["few"], 2),
        "scrape_ms_after_all": round(scrapes["all"], 2),
        "scrape_growth_all_vs_1k": round(scrapes["all"] / scrapes["few"], 2),
        "baseline_scrape_ms": round(scrapes["seed"], 2),
        "scrape_speedup_vs_baseline": round(scrapes["seed"] / scrapes["all"], 2),
        "redis_fields": fields,
        "baseline_keys": len(keys),
        "record_under_1ms": record_median < 1000,
        "dropped": dropped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=100_000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--baseline-sample", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args(argv)
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(answers=1000, versions=3, baseline_sample=300)
        args = parser.parse_args(argv)
    if args.answers < 1000:
        parser.error("--answers must be at least 1000 (the small database holds the first 1000)")
    result = run(args.answers, args.versions, args.baseline_sample)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
