"""The gate's rule: paired bootstrap intervals of challenger minus champion, decided in values.

Both models answered the same examples (`bigbertha.training.evaluate` keeps every example's
scores), so the comparison is paired: each bootstrap resample draws examples with replacement
and takes both models' scores on the drawn examples, which removes the between-question
variance that dwarfs a model's gain on a few dozen questions. The interval is the percentile
interval of the resampled differences at ``promote.confidence`` (seeded, so a decision can be
reproduced from the report).

The rule (``promote`` settings):
- every target metric (``gate_metrics``) must improve by more than ``margin`` (relative to the
  champion) across the whole interval: its lower bound is above the margin;
- every guard metric (``guard_metrics``: metric -> tolerance) must not fall by more than its
  tolerance (absolute) across the whole interval: its lower bound is at least -tolerance;
- an interval entirely on the wrong side is a verdict against the challenger ("rejected");
- fewer than ``min_examples`` paired examples, or an interval that straddles the threshold, is
  "not enough evidence": the champion stays, and the reason says which metric and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

LOWER_IS_BETTER = frozenset({"perplexity"})
SEED = 0  # fixed: the same reports give the same decision

Verdict = Literal["pass", "fail", "undecided", "info"]
Role = Literal["target", "guard", "info"]  # info: reported with its interval, not decided on


@dataclass
class MetricComparison:
    """One metric, challenger against champion on the paired examples."""

    metric: str
    role: Role
    examples: int
    champion: float
    challenger: float
    difference: float  # challenger - champion (in the metric's units)
    low: float  # interval of the difference
    high: float
    improvement: float  # relative, positive = better (perplexity falls)
    improvement_low: float
    improvement_high: float
    threshold: float  # margin (targets, relative) or -tolerance (guards, absolute)
    verdict: Verdict
    why: str

    def to_json(self) -> dict[str, Any]:
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in asdict(self).items()
        }


@dataclass
class Outcome:
    """The rule's answer: promote or not, whether the evidence sufficed, and why."""

    passed: bool
    evidence: Literal["sufficient", "insufficient"]
    reason: str
    metrics: dict[str, MetricComparison]


def _statistic(metric: str, rows: Sequence[Mapping[str, float]], idx: Any) -> Any:
    """The metric over the examples `idx` (rows of resampled indices): a mean, or for
    perplexity exp of the token-weighted mean negative log-likelihood."""
    import numpy as np

    if metric == "perplexity":
        nll = np.array([r["nll"] for r in rows])[idx]
        tokens = np.array([r["tokens"] for r in rows])[idx]
        return np.exp(nll.sum(axis=-1) / np.maximum(tokens.sum(axis=-1), 1))
    return np.array([r[metric] for r in rows])[idx].mean(axis=-1)


def _applies(metric: str, row: Mapping[str, Any]) -> bool:
    keys = ("nll", "tokens") if metric == "perplexity" else (metric,)
    return all(isinstance(row.get(k), int | float) and math.isfinite(row[k]) for k in keys)


def paired(
    challenger: Sequence[Mapping[str, Any]], champion: Sequence[Mapping[str, Any]], metric: str
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The two sides' scores on the examples (by id) where the metric applies to both."""
    ours = {row["id"]: row for row in champion}
    pairs = [
        (row, ours[row["id"]])
        for row in challenger
        if row["id"] in ours and _applies(metric, row) and _applies(metric, ours[row["id"]])
    ]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _relative(metric: str, challenger: Any, champion: Any) -> Any:
    """Relative improvement, positive = better; a gain over a champion at 0 is infinite."""
    import numpy as np

    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    diff = sign * (challenger - champion)
    base = np.abs(champion)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, diff / np.where(base > 0, base, 1), np.sign(diff) * np.inf)


def compare(
    metric: str,
    role: Role,
    challenger: Sequence[Mapping[str, Any]],
    champion: Sequence[Mapping[str, Any]],
    *,
    threshold: float,
    confidence: float,
    min_examples: int,
    resamples: int,
) -> MetricComparison:
    """One metric's paired bootstrap interval and its verdict under the rule."""
    import numpy as np

    theirs, ours = paired(challenger, champion, metric)
    n = len(theirs)
    nan = math.nan
    if n == 0:
        return MetricComparison(
            metric,
            role,
            0,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            nan,
            threshold,
            "undecided",
            f"{metric}: no example both models were scored on",
        )
    everything = np.arange(n)[None, :]
    point_ch = float(_statistic(metric, theirs, everything)[0])
    point_cp = float(_statistic(metric, ours, everything)[0])
    idx = np.random.default_rng(SEED).integers(0, n, size=(resamples, n))
    s_ch, s_cp = _statistic(metric, theirs, idx), _statistic(metric, ours, idx)
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(s_ch - s_cp, [tail, 1 - tail]))
    rel = np.sort(_relative(metric, s_ch, s_cp))
    # Order statistics, not interpolation: an infinite gain must not turn into NaN.
    rel_low = float(rel[int(math.floor(tail * (resamples - 1)))])
    rel_high = float(rel[int(math.ceil((1 - tail) * (resamples - 1)))])
    gain = float(_relative(metric, np.array(point_ch), np.array(point_cp)))
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    level = f"{confidence:.0%}"
    if role == "target":
        lo, hi = rel_low, rel_high
        shown = (
            f"{metric} {point_cp:.4g} -> {point_ch:.4g} ({gain:+.1%}, {level} CI "
            f"{lo:+.1%}..{hi:+.1%})"
        )
    else:  # guards: the absolute change, better direction positive
        lo, hi = sorted((sign * low, sign * high))
        shown = (
            f"{metric} {point_cp:.4g} -> {point_ch:.4g} ({level} CI of the change "
            f"{lo:+.3g}..{hi:+.3g})"
        )
    verdict: Verdict
    if role == "info":
        verdict, why = "info", shown
    elif n < min_examples:
        verdict, why = "undecided", f"{shown}: only {n} paired examples (need {min_examples})"
    elif role == "target" and lo > threshold:
        verdict, why = "pass", f"{shown} > {threshold:.1%}"
    elif role == "target" and hi <= threshold:
        verdict, why = "fail", f"{shown}: not better by {threshold:.1%}"
    elif role == "guard" and lo >= threshold:
        verdict, why = "pass", f"{shown}: within tolerance {-threshold:.3g}"
    elif role == "guard" and hi < threshold:
        verdict, why = "fail", f"{shown}: regressed beyond tolerance {-threshold:.3g}"
    else:
        against = f"{threshold:+.1%}" if role == "target" else f"{threshold:+.3g}"
        verdict, why = "undecided", f"{shown}: interval too wide to tell against {against}"
    return MetricComparison(
        metric,
        role,
        n,
        point_cp,
        point_ch,
        point_ch - point_cp,
        low,
        high,
        gain,
        rel_low,
        rel_high,
        threshold,
        verdict,
        why,
    )


def decide(
    challenger: Sequence[Mapping[str, Any]],
    champion: Sequence[Mapping[str, Any]],
    *,
    targets: Sequence[str],
    guards: Mapping[str, float],
    margin: float,
    confidence: float,
    min_examples: int,
    resamples: int,
    informational: Sequence[str] = (),
) -> Outcome:
    """The rule over every target and guard metric (see the module docstring); the
    `informational` metrics get their intervals too, for the report, but no say."""
    table: dict[str, MetricComparison] = {}
    for metric in targets:
        table[metric] = compare(
            metric,
            "target",
            challenger,
            champion,
            threshold=margin,
            confidence=confidence,
            min_examples=min_examples,
            resamples=resamples,
        )
    for metric, tolerance in guards.items():
        if metric not in table:
            table[metric] = compare(
                metric,
                "guard",
                challenger,
                champion,
                threshold=-tolerance,
                confidence=confidence,
                min_examples=min_examples,
                resamples=resamples,
            )
    for metric in informational:
        if metric not in table:
            table[metric] = compare(
                metric,
                "info",
                challenger,
                champion,
                threshold=0.0,
                confidence=confidence,
                min_examples=min_examples,
                resamples=resamples,
            )
    decided = [c for c in table.values() if c.role != "info"]
    failed = [c.why for c in decided if c.verdict == "fail"]
    undecided = [c.why for c in decided if c.verdict == "undecided"]
    if failed:
        return Outcome(False, "sufficient", "rejected: " + "; ".join(failed), table)
    if undecided:
        return Outcome(False, "insufficient", "not enough evidence: " + "; ".join(undecided), table)
    return Outcome(True, "sufficient", "better: " + "; ".join(c.why for c in decided), table)
