"""Benchmark: the live canary's error rates, by simulation with the chart's polling.

    .venv/bin/python bench/canary_sim.py [--canaries 10000] [--quick] [--margin 0.05] ...

Three scenarios, `--canaries` canaries each: the challenger's down-vote ratio is the champion's
(`--baseline`) plus the margin (worse), equal to it, or minus the margin (better). Votes arrive
as a Poisson process (`--votes-per-minute`, split between the sides by `--share`), and every
`--poll-seconds` the step judges the counts so far with the real decision function,
`bigbertha.training.canary.evidence` (vectorised over all canaries of a scenario), until it
decides or the deadline passes (then `on_deadline`: retire). Figures per scenario: the
promotion rate with its 95% Clopper-Pearson interval, the share decided by the planned votes,
the median votes (both sides) and minutes to a decision.

The baseline, measured in the same run on the same vote streams, is the rule the canary used
before: promote once both sides have `--old-min-votes` (30) when the challenger's down-vote
ratio is at most the champion's plus the margin. Its false-promotion rate over the sequential
test's is the ratio printed. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np
from scipy.stats import binomtest

from bigbertha.core.settings import CanarySettings
from bigbertha.training.canary import PROMOTE, RETIRE_PLANNED, Design, evidence

SCENARIOS = {"worse": 1.0, "equal": 0.0, "better": -1.0}  # challenger - champion, in margins


def simulate(
    design: Design,
    challenger_ratio: float,
    champion_ratio: float,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """`args.canaries` canaries of one scenario; the new rule's and the old rule's outcomes."""
    n = args.canaries
    per_poll = args.votes_per_minute * args.poll_seconds / 60.0
    polls = math.ceil(args.deadline_seconds / args.poll_seconds)
    d1, n1, d0, n0 = (np.zeros(n, dtype=np.int64) for _ in range(4))
    code = np.zeros(n, dtype=np.int64)  # 0 while undecided
    votes_at = np.zeros(n)
    poll_at = np.zeros(n)
    old = np.full(n, -1, dtype=np.int64)  # the old rule: 1 promoted, 0 retired, -1 undecided
    for poll in range(1, polls + 1):
        # Votes since the last poll: Poisson counts on each side, each down with its ratio.
        new1 = rng.poisson(per_poll * args.share, n)
        new0 = rng.poisson(per_poll * (1 - args.share), n)
        d1 += rng.binomial(new1, challenger_ratio)
        d0 += rng.binomial(new0, champion_ratio)
        n1 += new1
        n0 += new0
        open_ = code == 0
        if open_.any():
            judged = evidence(d1[open_], n1[open_], d0[open_], n0[open_], design)["code"]
            idx = np.flatnonzero(open_)[judged != 0]
            code[idx] = judged[judged != 0]
            votes_at[idx] = n1[idx] + n0[idx]
            poll_at[idx] = poll
        undecided_old = old < 0
        ready = undecided_old & (n1 >= args.old_min_votes) & (n0 >= args.old_min_votes)
        if ready.any():
            ratio1 = d1[ready] / n1[ready]
            ratio0 = d0[ready] / n0[ready]
            old[ready] = (ratio1 <= ratio0 + design.margin).astype(np.int64)
        if not open_.any() and not (old < 0).any():
            break
    # The deadline: undecided canaries end as on_deadline says (retire by default).
    deadline = code == 0
    votes_at[deadline] = n1[deadline] + n0[deadline]
    poll_at[deadline] = polls
    promoted = int((code == PROMOTE).sum())
    old_promoted = int((old == 1).sum())
    ci = binomtest(promoted, n).proportion_ci(confidence_level=0.95, method="exact")
    return {
        "promoted": promoted / n,
        "promoted_ci": [round(ci.low, 4), round(ci.high, 4)],
        "retired_at_planned": float((code == RETIRE_PLANNED).mean()),
        "at_deadline": float(deadline.mean()),
        "median_votes": float(np.median(votes_at)),
        "median_minutes": float(np.median(poll_at) * args.poll_seconds / 60.0),
        "old_rule_promoted": old_promoted / n,
        "old_rule_median_votes": 2.0 * args.old_min_votes,
    }


def main() -> None:
    defaults = CanarySettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=10_000, help="per scenario")
    parser.add_argument("--quick", action="store_true", help="300 canaries a scenario (CI)")
    parser.add_argument("--margin", type=float, default=defaults.margin)
    parser.add_argument("--false-promotion-rate", type=float, default=defaults.false_promotion_rate)
    parser.add_argument("--power", type=float, default=defaults.power)
    parser.add_argument("--baseline", type=float, default=defaults.baseline_down_ratio)
    parser.add_argument("--min-votes", type=int, default=defaults.min_votes)
    parser.add_argument("--share", type=float, default=0.5, help="the challenger's share")
    parser.add_argument("--votes-per-minute", type=float, default=12.0, help="both sides")
    parser.add_argument("--poll-seconds", type=float, default=defaults.poll_seconds)
    parser.add_argument("--deadline-seconds", type=float, default=defaults.deadline_seconds)
    parser.add_argument("--old-min-votes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    if args.quick:
        args.canaries = min(args.canaries, 300)
    design = Design.plan(
        margin=args.margin,
        false_promotion_rate=args.false_promotion_rate,
        power=args.power,
        baseline=args.baseline,
        min_votes=args.min_votes,
    )
    print(f"design: {design.describe()}; max information {design.max_information:.0f}")
    print(
        f"{args.canaries} canaries a scenario, {args.votes_per_minute:g} votes/min, share "
        f"{args.share:g}, a poll every {args.poll_seconds:g}s, deadline {args.deadline_seconds:g}s"
    )
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    results = {}
    for name, shift in SCENARIOS.items():
        challenger = args.baseline + shift * args.margin
        results[name] = r = simulate(design, challenger, args.baseline, args, rng)
        print(
            f"{name:>6} (challenger {challenger:.3f} vs {args.baseline:.3f}): promoted "
            f"{r['promoted']:.4f} (95% CI {r['promoted_ci'][0]:.4f}-{r['promoted_ci'][1]:.4f}), "
            f"retired at the planned votes {r['retired_at_planned']:.4f}, deadline "
            f"{r['at_deadline']:.4f}, median {r['median_votes']:.0f} votes / "
            f"{r['median_minutes']:.0f} min; old rule promoted {r['old_rule_promoted']:.4f}"
        )
    seconds = time.perf_counter() - started
    false_promotion = results["worse"]["promoted"]
    old_false = results["worse"]["old_rule_promoted"]
    ratio = old_false / false_promotion if false_promotion else math.inf
    ok = (
        results["worse"]["promoted_ci"][0] <= args.false_promotion_rate
        and results["better"]["promoted"] >= args.power
    )
    print(
        f"false promotions {false_promotion:.4f} (limit {args.false_promotion_rate:g}), power "
        f"{results['better']['promoted']:.4f} (target {args.power:g}); the old rule's false "
        f"promotions {old_false:.4f}: {ratio:.1f}x; {seconds:.1f}s"
    )
    print(
        json.dumps(
            {
                "benchmark": "canary_sim",
                "canaries_per_scenario": args.canaries,
                "design": {
                    "margin": design.margin,
                    "false_promotion_rate": design.false_promotion_rate,
                    "power": design.power,
                    "baseline": design.baseline,
                    "planned_votes_per_side": design.planned_votes,
                },
                "false_promotion_rate": false_promotion,
                "false_promotion_ci": results["worse"]["promoted_ci"],
                "power": results["better"]["promoted"],
                "promotion_rate_equal": results["equal"]["promoted"],
                "median_votes": {k: v["median_votes"] for k, v in results.items()},
                "median_minutes": {k: v["median_minutes"] for k, v in results.items()},
                "baseline_old_rule_false_promotion_rate": old_false,
                "baseline_old_rule_power": results["better"]["old_rule_promoted"],
                "ratio_old_to_new_false_promotions": ratio,
                "meets_targets": ok,
                "seconds": round(seconds, 2),
            }
        )
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
