"""A round's one-line summary: promoted or kept, and by how much on each gate metric."""

from __future__ import annotations

from bigbertha.local.scenario import Round


def _round(**kw) -> Round:
    metrics = {
        "perplexity": {"champion": "9.35", "challenger": "6.58"},
        "token_f1": {"champion": "0.46", "challenger": "0.54"},
    }
    return Round(
        1, 0.0, served_before="smollm2", outcome={"version": "1", "metrics": metrics}, **kw
    )


def test_a_promotion_says_by_how_much():
    line = _round(champion_after="1").summary()
    assert line == (
        "round 1 (quality): promoted version 1 over smollm2: perplexity 9.35 -> 6.58 (+29.6%), "
        "token_f1 0.46 -> 0.54 (+17.4%); margin 0%"
    )


def test_a_kept_champion_names_the_challenger_that_lost():
    rnd = _round(champion_after="smollm2")
    rnd.margin = 1.0
    assert not rnd.promoted
    assert rnd.summary().startswith(
        "round 1 (quality): kept champion smollm2 (challenger version 1): perplexity"
    )
    assert rnd.summary().endswith("; margin 100%")


def test_a_round_without_a_decision_still_has_a_line():
    rnd = Round(2, 0.0, kind="canary", served_before="3")
    assert rnd.summary() == "round 2 (canary): kept champion 3 (challenger version ?); margin 0%"


CANARY = "down-vote ratio challenger 0.25 (3 down of 12) vs champion 0.50 (3 down of 6)"


def test_a_promotion_through_the_canary_also_gives_its_verdict():
    rnd = _round(champion_after="1")
    rnd.outcome["canary"] = {"decision": "promoted", "reason": CANARY + ": not worse"}
    assert rnd.summary().endswith(f"; margin 0%; live canary: {CANARY}: not worse")


def test_a_challenger_retired_by_the_canary_says_so_not_the_gate_numbers_it_won():
    rnd = _round(champion_after="smollm2")
    rnd.outcome["canary"] = {"decision": "retired", "reason": CANARY + ": worse by more than 0.10"}
    assert rnd.summary() == (
        "round 1 (quality): kept champion smollm2 (challenger version 1 retired by the live "
        f"canary: {CANARY}: worse by more than 0.10)"
    )


def test_the_line_gives_each_decided_metrics_interval_and_leaves_the_others_to_the_report():
    rnd = _round(champion_after="1")
    rnd.outcome["metrics"] = {
        "token_f1": {
            "champion": "0.2",
            "challenger": "0.3",
            "interval": "0.05..0.15",
            "verdict": "target pass",
        },
        "mrr": {"champion": "0.8", "challenger": "0.8", "interval": "0..0", "verdict": "info info"},
    }
    assert rnd.summary() == (
        "round 1 (quality): promoted version 1 over smollm2: "
        "token_f1 0.2 -> 0.3 (+50.0%, change CI 0.05..0.15); margin 0%"
    )
