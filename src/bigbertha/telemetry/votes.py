"""Users' votes per model version, read back from Prometheus: the live canary's evidence.

The exporter exposes ``bigbertha_feedback_total{model, model_version, rating}``, counted in
Redis since the version first answered. A canary compares the votes each version got *since the
canary started*, so that the champion's history (often the very down votes that started the
retraining) does not weigh on the comparison. `since` therefore reads every version's counters
twice through Prometheus' instant-query API, at the start and now, and subtracts:

- ``max by (model_version, rating)``: every exporter replica reads the same Redis and exports
  the same totals, so summing replicas would count each vote once per replica;
- ``last_over_time(...[LOOKBACK])``: the latest sample at each moment, even when a scrape or two
  were missed around it;
- a counter that went down (Redis lost its data) restarted from zero: its current value is the
  count since then.

Prometheus unreachable or failing is `ServiceUnavailable` (transient: the canary polls again,
and the workflow retries it); a query Prometheus rejects is a `ConfigError` naming the selector.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from bigbertha.core.errors import ConfigError, ServiceUnavailable

FEEDBACK = "bigbertha_feedback_total"
#: How far back the last sample before a moment may lie (a few missed scrapes, not a day).
LOOKBACK = "15m"
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Votes:
    """Up and down votes of one version over some period."""

    up: int = 0
    down: int = 0

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def down_ratio(self) -> float | None:
        """Down votes over all votes; None without any vote."""
        return self.down / self.total if self.total else None

    def __add__(self, other: Votes) -> Votes:
        return Votes(self.up + other.up, self.down + other.down)

    def describe(self) -> str:
        ratio = self.down_ratio
        shown = "no votes" if ratio is None else f"{ratio:.2f}"
        return f"{shown} ({self.down} down of {self.total})"


def _label(value: str) -> str:
    """A PromQL string literal (JSON's escapes are PromQL's)."""
    return json.dumps(value, ensure_ascii=False)


def feedback_query(model: str, selector: str = "") -> str:
    """Every version's vote totals of `model` at the query's moment, by version and rating."""
    matchers = f"model={_label(model)}" + (f",{selector}" if selector else "")
    return f"max by (model_version, rating) (last_over_time({FEEDBACK}{{{matchers}}}[{LOOKBACK}]))"


def instant_query(
    url: str, promql: str, at: float | None = None, *, timeout: float = TIMEOUT_SECONDS
) -> list[dict[str, Any]]:
    """The result vector of one instant query (at unix time `at`, default now)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    endpoint = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        error = _error_of(exc)
        if exc.code in (400, 422):
            raise ConfigError(
                f"Prometheus at {url} rejects the vote query ({error}): "
                "check canary.prometheus_selector"
            ) from None
        raise ServiceUnavailable(f"Prometheus at {url}: HTTP {exc.code} ({error})") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(f"Prometheus at {url} is unreachable ({reason})") from None
    data = body.get("data") if isinstance(body, dict) else None
    if body.get("status") != "success" or not isinstance(data, dict):
        raise ServiceUnavailable(f"Prometheus at {url}: query failed ({body.get('error')})")
    if data.get("resultType") != "vector":
        raise ServiceUnavailable(f"Prometheus at {url}: {data.get('resultType')}, not a vector")
    result: list[dict[str, Any]] = data["result"]
    return result


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"])
    except Exception:
        return exc.reason or f"HTTP {exc.code}"


def totals(
    url: str, model: str, selector: str = "", at: float | None = None
) -> dict[tuple[str, str], int]:
    """(model_version, rating) -> votes counted up to `at` (now by default)."""
    counts: dict[tuple[str, str], int] = {}
    for sample in instant_query(url, feedback_query(model, selector), at):
        labels = sample.get("metric", {})
        version, rating = labels.get("model_version"), labels.get("rating")
        if version is None or rating not in ("up", "down"):
            continue
        counts[(str(version), str(rating))] = round(float(sample["value"][1]))
    return counts


def since(
    url: str, model: str, started: float, *, selector: str = "", now: float | None = None
) -> dict[str, Votes]:
    """model_version -> the votes it got between `started` and `now` (unix times)."""
    before = totals(url, model, selector, started)
    after = totals(url, model, selector, now)
    votes: dict[str, Votes] = {}
    for (version, rating), count in after.items():
        gained = count - before.get((version, rating), 0)
        if gained < 0:  # the counter restarted from zero after `started`
            gained = count
        current = votes.get(version, Votes())
        votes[version] = current + (Votes(up=gained) if rating == "up" else Votes(down=gained))
    return votes
