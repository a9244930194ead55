"""comparison: the gate's paired bootstrap rule on hand-built per-example scores."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from bigbertha.training import comparison


def scores(values: list[float], nll: float = 10.0) -> list[dict[str, Any]]:
    return [
        {"id": f"q{i}", "token_f1": v, "groundedness": v, "nll": nll, "tokens": 5}
        for i, v in enumerate(values)
    ]


def decide(challenger: Any, champion: Any, **rule: Any) -> comparison.Outcome:
    settings: dict[str, Any] = {
        "targets": ["token_f1"],
        "guards": {},
        "margin": 0.0,
        "confidence": 0.9,
        "min_examples": 20,
        "resamples": 2000,
    }
    return comparison.decide(challenger, champion, **{**settings, **rule})


RNG = random.Random(7)
CHAMPION = [RNG.uniform(0.1, 0.6) for _ in range(40)]


def test_a_clear_win_on_every_example_promotes() -> None:
    outcome = decide(scores([v + 0.2 for v in CHAMPION]), scores(CHAMPION))
    assert outcome.passed and outcome.evidence == "sufficient"
    row = outcome.metrics["token_f1"]
    assert row.low == pytest.approx(0.2) and row.high == pytest.approx(0.2)
    assert row.verdict == "pass" and row.examples == 40


def test_noise_is_not_enough_evidence_and_says_which_metric() -> None:
    noisy = [min(1.0, max(0.0, v + RNG.gauss(0.02, 0.25))) for v in CHAMPION]
    outcome = decide(scores(noisy), scores(CHAMPION))
    assert not outcome.passed and outcome.evidence == "insufficient"
    assert outcome.reason.startswith("not enough evidence: token_f1")
    row = outcome.metrics["token_f1"]
    assert row.low < 0 < row.high


def test_too_few_examples_are_not_enough_evidence_even_for_a_clear_win() -> None:
    outcome = decide(scores([v + 0.2 for v in CHAMPION[:10]]), scores(CHAMPION[:10]))
    assert not outcome.passed and outcome.evidence == "insufficient"
    assert "only 10 paired examples (need 20)" in outcome.reason


def test_a_guard_regression_rejects_a_target_win() -> None:
    champion = scores(CHAMPION)
    challenger = [{**row, "token_f1": row["token_f1"] + 0.2} for row in champion]
    for row in challenger:
        row["groundedness"] -= 0.3
    outcome = decide(challenger, champion, guards={"groundedness": 0.1})
    assert not outcome.passed and outcome.evidence == "sufficient"
    assert outcome.reason.startswith("rejected: groundedness")
    assert outcome.metrics["groundedness"].verdict == "fail"
    # Reported for information only, the same regression has no say.
    shown = decide(challenger, champion, informational=["groundedness"])
    assert shown.passed and shown.metrics["groundedness"].role == "info"
    assert shown.metrics["groundedness"].high == pytest.approx(-0.3)
    # Within its tolerance, the same guard lets the win through.
    assert decide(challenger, champion, guards={"groundedness": 0.5}).passed


def test_the_margin_is_relative_and_a_huge_one_keeps_the_champion() -> None:
    better = scores([v + 0.2 for v in CHAMPION])
    assert not decide(better, scores(CHAMPION), margin=100).passed
    assert decide(better, scores(CHAMPION), margin=0.3).passed  # about +57% on this sample


def test_perplexity_is_token_weighted_and_lower_is_better() -> None:
    outcome = decide(scores(CHAMPION, nll=8.0), scores(CHAMPION, nll=10.0), targets=["perplexity"])
    row = outcome.metrics["perplexity"]
    assert outcome.passed and row.challenger < row.champion
    # exp(mean NLL per token): e^(8/5) against e^(10/5), a relative fall of 1 - e^-0.4.
    assert row.challenger == pytest.approx(math.exp(1.6))
    assert row.improvement == pytest.approx(1 - math.exp(-0.4))


def test_only_examples_both_sides_were_scored_on_are_paired() -> None:
    champion = scores(CHAMPION)
    challenger = scores([v + 0.2 for v in CHAMPION])
    for row in challenger[:25]:
        row["token_f1"] = float("nan")  # does not apply (e.g. an unanswerable question)
    outcome = decide(challenger, champion)
    assert outcome.metrics["token_f1"].examples == 15 and outcome.evidence == "insufficient"
