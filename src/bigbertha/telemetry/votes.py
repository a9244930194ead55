"""Users' votes per model version, read back from Prometheus: the live canary's evidence.

The exporter exposes ``bigbertha_feedback_total{model, model_version, rating}`` (votes cast) and
``bigbertha_feedback_replaced_total`` (votes a later vote on the same answer replaced), counted
in Redis since the version first answered; the votes standing are the difference. A canary
compares the votes each version got *since the canary started*, so that the champion's history
(often the very down votes that started the retraining) does not weigh on the comparison:

- the counters at the start are a *baseline recorded durably* on the challenger's version (tag
  ``canary.baseline``), read from Redis by `canary.start` at the very moment the alias moves,
  and each poll subtracts it from the counters Prometheus shows now (`gained`). A Prometheus
  restarted since (or a replica that never saw the start) needs only its current samples: a
  snapshot Prometheus would be asked for later may be lost with its storage, and then the
  champion's whole history would count;
- ``max by (model_version, rating)``: every exporter replica reads the same Redis and exports
  the same totals, so summing replicas would count each vote once per replica;
- ``last_over_time(...[LOOKBACK])``: the latest sample, even when a scrape or two were missed;
- a counter below its baseline (Redis lost its data) restarted from zero: its current value is
  the count since then.

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
REPLACED = "bigbertha_feedback_replaced_total"
#: (counter name, model_version, rating) -> its value: what a baseline holds.
Counts = dict[tuple[str, str, str], int]
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
    """Both vote counters of `model` at the query's moment, by counter, version and rating."""
    matchers = f'__name__=~"{FEEDBACK}|{REPLACED}",model={_label(model)}' + (
        f",{selector}" if selector else ""
    )
    return f"max by (__name__, model_version, rating) (last_over_time({{{matchers}}}[{LOOKBACK}]))"


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


def counters(url: str, model: str, selector: str = "", at: float | None = None) -> Counts:
    """(counter, model_version, rating) -> its value at `at` (now by default)."""
    counts: Counts = {}
    for sample in instant_query(url, feedback_query(model, selector), at):
        labels = sample.get("metric", {})
        name, version, rating = (labels.get(k) for k in ("__name__", "model_version", "rating"))
        if name not in (FEEDBACK, REPLACED) or version is None or rating not in ("up", "down"):
            continue
        counts[(str(name), str(version), str(rating))] = round(float(sample["value"][1]))
    return counts


def standing(counts: Counts) -> dict[str, Votes]:
    """model_version -> the votes standing in `counts` (cast minus replaced)."""
    votes: dict[str, Votes] = {}
    for (name, version, rating), count in counts.items():
        signed = count if name == FEEDBACK else -count
        change = Votes(up=signed) if rating == "up" else Votes(down=signed)
        votes[version] = votes.get(version, Votes()) + change
    return votes


def scraped(
    url: str, model: str, selector: str = "", at: float | None = None
) -> tuple[float, float] | None:
    """When the vote counters that `counters` reads at `at` were scraped: the oldest and the
    newest sample's timestamp (one exporter: one scrape, both equal). A vote stored before the
    oldest is in the counts, one stored after the newest scrape is not. None: no sample."""
    rest = f",model={_label(model)}" + (f",{selector}" if selector else "")
    # timestamp() of a plain selector is the sample's own time (the latest within Prometheus'
    # 5-minute lookback), not the query's; it drops the name, so one selector per counter (a
    # series `or` drops has its twin's labels: the same target, the same scrape).
    promql = " or ".join(f'timestamp({{__name__="{name}"{rest}}})' for name in (FEEDBACK, REPLACED))
    stamps = [float(s["value"][1]) for s in instant_query(url, promql, at)]
    return (min(stamps), max(stamps)) if stamps else None


def totals(
    url: str, model: str, selector: str = "", at: float | None = None
) -> dict[tuple[str, str], int]:
    """(model_version, rating) -> votes standing up to `at` (now by default)."""
    out: dict[tuple[str, str], int] = {}
    for version, counted in standing(counters(url, model, selector, at)).items():
        out[(version, "up")], out[(version, "down")] = counted.up, counted.down
    return out


def gained(
    url: str, model: str, baseline: Counts, *, selector: str = "", now: float | None = None
) -> dict[str, Votes]:
    """model_version -> the votes it got since `baseline` was taken, up to `now`."""
    since: Counts = {}
    for key, count in counters(url, model, selector, now).items():
        before = baseline.get(key, 0)
        since[key] = count if count < before else count - before  # below: Redis restarted
    return standing(since)


def encode(counts: Counts) -> str:
    """A baseline as the version's tag holds it (JSON)."""
    return json.dumps([[*key, n] for key, n in sorted(counts.items())], separators=(",", ":"))


def decode(text: str) -> Counts:
    """The baseline of a tag; ValueError if it is not one."""
    return {(str(a), str(b), str(c)): int(n) for a, b, c, n in json.loads(text)}
