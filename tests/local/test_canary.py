"""The demo's scripted raters: their tastes let the canary tell the sides apart whatever the
vote counts, never trip the demo's retrain alert, and the report's ratios are since the start."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from bigbertha.local.canary import SCRAPE_SLACK_SECONDS, TASTE, Vote, reconcile
from bigbertha.local.report import down_ratios_since, statistic_table
from bigbertha.telemetry.votes import Votes
from bigbertha.training.canary import Design, judge

ROOT = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((ROOT / "values" / "demo.yaml").read_text())


def votes(taste: str, count: int) -> Votes:
    ratings = list(itertools.islice(itertools.cycle(TASTE[taste]), count))
    return Votes(up=ratings.count("up"), down=ratings.count("down"))


@pytest.mark.parametrize("prefer", ["challenger", "champion"])
def test_the_canary_tells_the_tastes_apart_within_its_plan(prefer: str) -> None:
    """Whatever the two sides' vote counts (up to the planned votes the raters cast at most),
    the demo's sequential test never decides the wrong way, and with as many votes a side as
    the raters cast in a minute or so it has decided."""
    c = DEMO["settings"]["canary"]
    design = Design.plan(
        margin=c["margin"],
        false_promotion_rate=c["false_promotion_rate"],
        power=c.get("power", 0.8),
        baseline=c["baseline_down_ratio"],
        min_votes=c["min_votes"],
    )
    expected = "promoted" if prefer == "challenger" else "retired"
    liked, disliked = ("liked", "disliked") if prefer == "challenger" else ("disliked", "liked")
    counts = range(c["min_votes"], design.planned_votes + 1)
    for mine, theirs in itertools.product(counts, repeat=2):
        outcome, reason, _ = judge(votes(liked, mine), votes(disliked, theirs), design)
        assert outcome in (None, expected), (mine, theirs, reason)
    assert judge(votes(liked, 12), votes(disliked, 12), design)[0] == expected


@pytest.mark.parametrize("taste", ["liked", "disliked"])
def test_the_raters_never_start_a_retraining(taste: str) -> None:
    """At no point do their votes put a version over the retrain alert's threshold."""
    rule = DEMO["monitoring"]["rules"]["negativeFeedback"]
    for count in range(rule["minVotes"], 60):
        ratio = votes(taste, count).down_ratio
        assert ratio is not None and ratio <= rule["threshold"], (count, ratio)


def test_the_plotted_ratio_counts_only_votes_since_the_start() -> None:
    start = 100.0
    down = [(90.0, 5.0), (101.0, 5.0), (102.0, 6.0), (103.0, 6.0)]
    up = [(90.0, 1.0), (101.0, 2.0), (102.0, 2.0), (103.0, 4.0)]
    # Since 100: one up at 101, one down at 102, two up at 103.
    assert down_ratios_since(down, up, start) == [(1.0, 0.0), (2.0, 0.5), (3.0, 0.25)]


def test_the_report_shows_the_statistic_over_time_with_its_thresholds() -> None:
    """The polls the canary recorded, as the demo's report tabulates them: the last row is the
    one that crossed the promotion threshold."""
    import dataclasses

    c = DEMO["settings"]["canary"]
    design = Design.plan(
        margin=c["margin"],
        false_promotion_rate=c["false_promotion_rate"],
        power=0.8,
        baseline=c["baseline_down_ratio"],
        min_votes=c["min_votes"],
    )
    points, verdict = [], None
    for n in range(c["min_votes"], 30):
        verdict, _, point = judge(votes("liked", n), votes("disliked", n), design)
        points.append({"t": 2.0 * n, **point})
        if verdict:
            break
    assert verdict == "promoted"
    canary = {"design": dataclasses.asdict(design), "statistic": points}
    table = statistic_table(canary)
    assert "log LR promote (at 2.30)" in table  # log(1 / 0.1)
    assert f"within {design.planned_votes} votes a side" in table
    assert table.count("<tr>") == len(points) + 1
    assert f"<td>{points[-1]['log_lr_promote']:.2f}</td>" in table
    assert points[-1]["log_lr_promote"] >= 2.30 > points[-2]["log_lr_promote"]


def test_the_raters_votes_reconcile_with_the_canary_counts_or_the_demo_fails() -> None:
    from bigbertha.local.timeline import DemoFailed

    scrape = 1000.0
    votes = [
        Vote("challenger", "up", scrape - 5),
        Vote("challenger", "down", scrape - 1),
        Vote("champion", "down", scrape - 2),
        Vote("challenger", "up", scrape + 0.01),  # stored as the exporter read Redis: either
        Vote("champion", "up", scrape + SCRAPE_SLACK_SECONDS + 5),  # after: never counted
        Vote("champion", "down", None),  # Redis lost it: nothing to count
    ]
    for counted_up in (1, 2):  # the vote at the scrape in it or not
        counted = {"challenger": (counted_up, 1), "champion": (0, 1)}
        before, after = reconcile(votes, counted, (scrape, scrape))
        assert before == counted
        assert after == {"challenger": (2 - counted_up, 0), "champion": (1, 1)}
    # A vote stored before the scrape and not counted, or one after and counted: demo fails.
    with pytest.raises(DemoFailed, match="champion down: counted 0, the raters stored 1"):
        reconcile(votes, {"challenger": (1, 1), "champion": (0, 0)}, (scrape, scrape))
    with pytest.raises(DemoFailed, match="champion up: counted 1, the raters stored 0"):
        reconcile(votes, {"challenger": (1, 1), "champion": (1, 1)}, (scrape, scrape))
    # Two exporter replicas scraped apart: a vote between their scrapes may be in or out.
    assert reconcile(votes[:3], {"challenger": (0, 1), "champion": (0, 1)}, (scrape - 6, scrape))


def test_ctrl_c_while_the_raters_vote_stops_them_at_once() -> None:
    # The raters vote until the canary decides: a Ctrl-C that waited for them waited for that.
    import os
    import signal
    import threading
    import time

    from bigbertha.local.canary import run_users

    stop, ended = threading.Event(), []
    deadline = time.monotonic() + 10  # a lost signal fails the test instead of hanging it

    def user() -> int:
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        ended.append(time.monotonic())
        return 1

    # Ctrl-C as a terminal delivers it: KeyboardInterrupt in the main thread, whatever handler
    # an earlier test in this worker process left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_users(2, user, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.is_set() and time.monotonic() - started < 2
    time.sleep(0.2)
    assert len(ended) == 2  # both users left after their current turn
    # Without an interruption the users' counts add up.
    assert run_users(3, lambda: 2, threading.Event()) == 6
