"""The live canary: a challenger serves a share of conversations until users' votes decide.

    bigbertha canary --promotion s3://runs/wf-1/promotion.json --report s3://runs/wf-1/canary.json
    bigbertha canary                    # watch the registry's current challenger
    bigbertha canary --retire           # end the current canary now, keeping the champion

When the offline gate passes and ``canary.share`` > 0, `start` points the registry's
``challenger`` alias at the new version (tag ``canary.started_at``); the chatbot then routes that
share of new conversations to it (chat/routing.py), and every vote is counted for the version
that answered. `run`, the retraining workflow's step after the gate:

1. finds the challenger (from the gate's report, or the alias) and when its canary started;
2. every ``canary.poll_seconds`` reads from Prometheus the votes the challenger and the rest of
   the traffic (the champion, or before there is one, the base model) got since that moment
   (`bigbertha.telemetry.votes`: the counters now minus the baseline `start` recorded on the
   version), until the sequential test decides or the deadline (start +
   ``canary.deadline_seconds``, so a retried step never extends it) passes;
3. decides by a sequential test with stated error rates (see "deciding" below): promote when
   the challenger is shown not worse by ``canary.margin`` at level
   ``canary.false_promotion_rate``; retire when it is shown not better by the margin, or its
   planned votes are spent; at the deadline undecided, ``canary.on_deadline``. Every poll's
   statistic is kept on the decision;
4. records the decision and its numbers as ``canary.*`` tags on the version, then moves the
   aliases: promote makes it champion (the old champion becomes ``previous``) and removes
   ``challenger``; retire removes ``challenger`` (share back to 0); then logs an MLflow run with
   the numbers and the alert's lineage, counts it (``bigbertha_promotions_total``) and writes
   the report.

An unreachable Prometheus or MLflow before the deadline is logged and polled again (a blip must
not end a canary that runs for hours); at the deadline it fails the step (exit 69, retried).

A decision already recorded on the version is finished again rather than decided twice, so a
step retried after a failure half-way is safe. A version that stopped being the challenger while
it was watched (retired by hand, or replaced by a newer one) ends the step as ``withdrawn``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.models import registry, tracking
from bigbertha.telemetry import votes as votes_api
from bigbertha.telemetry.votes import Votes

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

STARTED_TAG = "canary.started_at"
DECISION_TAG = "canary.decision"
RECORDED_TAG = "canary.recorded"  # the run and the counter are done too
BASELINE_TAG = "canary.baseline"  # the vote counters at the start (telemetry/votes.py)
NOT_ENOUGH_VOTES = "not enough votes"


@dataclass
class CanaryDecision:
    """What the canary decided about a challenger, on which votes, and when."""

    decision: str  # promoted | retired | withdrawn | skipped
    version: str | None
    reason: str
    champion_before: str | None = None
    champion_after: str | None = None
    challenger: dict[str, Any] = field(default_factory=dict)  # up, down, total, down_ratio
    champion: dict[str, Any] = field(default_factory=dict)  # the rest of the traffic, summed
    champion_versions: list[str] = field(default_factory=list)  # who that was
    share: float = 0.0
    min_votes: int = 0
    margin: float = 0.0
    design: dict[str, Any] = field(default_factory=dict)  # Design: error rates, planned votes
    # One point per poll: t (seconds since the start), votes a side, delta, information and
    # both tests' log likelihood ratios; what the report plots.
    statistic: list[dict[str, float]] = field(default_factory=list)
    started_at: float | None = None
    decided_at: float | None = None
    seconds: float | None = None  # from the challenger's start to the decision
    polls: int = 0
    # When the counts decided on were scraped (oldest, newest sample): votes stored before the
    # oldest are in them, votes after the newest are not (what the demo reconciles its raters'
    # votes with). None: Prometheus had no sample.
    counted_through: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _votes_doc(votes: Votes) -> dict[str, Any]:
    return {"up": votes.up, "down": votes.down, "total": votes.total, "ratio": votes.down_ratio}


def _recorder(settings: Settings) -> Any:
    from bigbertha.telemetry.recorder import Recorder

    return Recorder.from_settings(settings)


# --- starting and ending a canary -------------------------------------------------------------


def start(settings: Settings, version: str, *, now: float | None = None) -> float:
    """Make `version` the challenger (the gate passed); returns its start time.

    A challenger it replaces is retired ("superseded"), so only one canary runs at a time.
    """
    if registry.alias_version(settings, registry.CHALLENGER) == version:
        known = _started(registry.version_tags(settings, version))
        if known is not None:  # already running (a gate run again): its clock keeps running
            return known
    started = time.time() if now is None else now
    recorder = _recorder(settings)
    tags = {STARTED_TAG: repr(started), "canary.share": str(settings.canary.share)}
    # The votes so far, read from Redis as the alias moves and kept on the version: the
    # canary counts from them, whatever Prometheus forgets meanwhile (telemetry/votes.py).
    baseline = recorder.feedback_totals()
    if baseline is not None:
        tags[BASELINE_TAG] = votes_api.encode({k: n for k, n in baseline.items() if n})
    registry.set_tags(settings, version, tags)
    # The alias moves in one step: no moment without a challenger, then the old one's books.
    replaced = registry.set_challenger(settings, version)
    recorder.set_canary(version, started)
    if replaced is not None:
        _retire(settings, replaced, f"superseded by version {version}", {}, None)
    log.info(
        "version %s is the challenger: %.0f%% of new conversations until the canary decides",
        version,
        settings.canary.share * 100,
    )
    return started


def retire(
    settings: Settings,
    version: str,
    reason: str,
    *,
    lineage: Mapping[str, str] | None = None,
    report: str | None = None,
) -> CanaryDecision:
    """End the canary of `version` without promoting it (by hand, or its workflow failed).

    `version` is the challenger, or an undecided canary whose alias was removed by hand (its
    books are closed then); ConfigError for any other version.
    """
    tracking.bound_client_retries(settings)
    current = registry.alias_version(settings, registry.CHALLENGER)
    if current != version:
        tags = registry.version_tags(settings, version)
        if tags.get(DECISION_TAG) or STARTED_TAG not in tags:
            raise ConfigError(
                f"version {version} is not the challenger (the challenger is "
                f"{'version ' + current if current else 'unset'}): nothing to retire"
            )
    return _retire(settings, version, reason, lineage or {}, report)


def _retire(
    settings: Settings,
    version: str,
    reason: str,
    lineage: Mapping[str, str],
    report: str | None,
) -> CanaryDecision:
    started = _started(registry.version_tags(settings, version))
    champion = registry.alias_version(settings, registry.CHAMPION)
    decided = time.time()
    decision = CanaryDecision(
        "retired",
        version,
        reason,
        champion_before=champion,
        champion_after=champion,
        share=settings.canary.share,
        started_at=started,
        decided_at=decided,
        seconds=None if started is None else decided - started,
    )
    return _finish(settings, decision, lineage, report)


def _started(tags: Mapping[str, str]) -> float | None:
    try:
        return float(tags[STARTED_TAG])
    except (KeyError, ValueError):
        return None


# --- deciding ---------------------------------------------------------------------------------
#
# The rule is a pair of one-sided mixture sequential probability ratio tests (mSPRT; Robbins
# 1970, as Optimizely's "always valid p-values", Johari et al. 2017/2022, use it) on the
# difference of down-vote ratios, delta = challenger - champion, in its normal approximation:
#
# - promote when the test of H0 "delta >= +margin" (the challenger is worse by the margin)
#   rejects at level ``false_promotion_rate``;
# - retire when the test of H0 "delta <= -margin" (better by the margin) rejects at level
#   (1 - power) / 2 ("not better enough"), or when the planned information is reached first.
#
# Why a mixture SPRT and not a group-sequential design: the step looks every ``poll_seconds``
# for hours, at information fractions nobody plans in advance. A mixture likelihood ratio is a
# nonnegative martingale under H0, so by Ville's inequality P(it ever exceeds 1/alpha) <= alpha
# however often, and whenever, it is looked at; an alpha-spending design would need its looks
# fixed (or their number bounded) to compute its boundaries. The price is more votes than a
# fixed-sample test; `Design.planned_votes` says how many. The mixing density over the
# alternative is a half-normal of scale 2 * margin (the distance from H0 to the better-by-the-
# margin alternative), which makes the boundary sharpest where power is planned.
#
# The planned maximum information is the smallest at which the promote boundary, crossed by the
# statistic's value at that point alone, has probability power + (1 - power) / 2 for a
# challenger better by the margin; minus the futility test's (1 - power) / 2 that leaves power
# for promotion by then (bench/canary_sim.py measures both rates, with the chart's polling).


def _log_mixture_lr(z: Any, information: Any, tau: float) -> Any:
    """log of the half-normal-mixture likelihood ratio against H0, for the one-sided
    alternative on the side where z is negative (z: the standardised distance from H0).

    Lambda = 2 (1 + r)^-1/2 exp(z^2 s / 2) Phi(-z sqrt(s)), r = tau^2 I, s = r / (1 + r)
    (the normal likelihood integrated over a half-normal N(0, tau^2) on the alternative side).
    """
    import numpy as np
    from scipy.special import log_ndtr

    r = tau * tau * np.asarray(information, dtype=float)
    s = r / (1.0 + r)
    z = np.asarray(z, dtype=float)
    return np.log(2.0) - 0.5 * np.log1p(r) + 0.5 * z * z * s + log_ndtr(-z * np.sqrt(s))


@dataclass(frozen=True)
class Design:
    """The canary's sequential test, from the settings: its error rates and planned votes."""

    margin: float
    false_promotion_rate: float
    power: float
    baseline: float  # the champion's down-vote ratio the plan assumes
    min_votes: int
    max_information: float = 0.0  # 1 / Var(delta) at which the canary ends without promotion
    planned_votes: int = 0  # per side, at the baseline, to reach max_information

    @property
    def tau(self) -> float:
        return 2.0 * self.margin

    @property
    def futility_rate(self) -> float:
        return (1.0 - self.power) / 2.0

    @classmethod
    def plan(
        cls,
        *,
        margin: float,
        false_promotion_rate: float,
        power: float,
        baseline: float,
        min_votes: int,
    ) -> Design:
        """The design with its planned information and votes per side (see above)."""
        from scipy.optimize import brentq
        from scipy.stats import norm

        design = cls(margin, false_promotion_rate, power, baseline, min_votes)
        threshold = math.log(1.0 / false_promotion_rate)
        target = norm.ppf(power + design.futility_rate)

        def boundary(info: float) -> float:  # the z at which promotion is reached
            return float(
                brentq(lambda z: _log_mixture_lr(z, info, design.tau) - threshold, -60.0, 0.0)
            )

        # z at information I for a challenger better by the margin has mean -2 margin sqrt(I).
        def shortfall(info: float) -> float:
            return -2.0 * margin * math.sqrt(info) - boundary(info) + target

        low = 1.0 / design.tau**2  # r = 1: far below any plan, the boundary still finite
        high = 2.0 * low
        while shortfall(high) > 0:
            high *= 2.0
        info = float(brentq(shortfall, low, high))
        better = max(baseline - margin, 0.0)
        votes = info * (better * (1 - better) + baseline * (1 - baseline))
        planned = max(min_votes, math.ceil(votes))
        return dataclasses.replace(design, max_information=info, planned_votes=planned)

    @classmethod
    def from_settings(cls, settings: Settings) -> Design:
        c = settings.canary
        return cls.plan(
            margin=c.margin,
            false_promotion_rate=c.false_promotion_rate,
            power=c.power,
            baseline=c.baseline_down_ratio,
            min_votes=c.min_votes,
        )

    def describe(self) -> str:
        return (
            f"mSPRT, false promotion <= {self.false_promotion_rate:g} for a challenger worse by "
            f"{self.margin:g}, power {self.power:g} for one better by {self.margin:g} within "
            f"{self.planned_votes} votes a side (at a {self.baseline:g} down-vote baseline)"
        )


#: `evidence` codes: the canary goes on, or what it decided and why.
CONTINUE, PROMOTE, RETIRE_EVIDENCE, RETIRE_PLANNED = 0, 1, 2, 3


def evidence(
    challenger_down: Any,
    challenger_total: Any,
    champion_down: Any,
    champion_total: Any,
    design: Design,
) -> dict[str, Any]:
    """The test's statistic and decision code for vote counts: scalars or numpy arrays
    (bench/canary_sim.py judges thousands of simulated canaries in one call).

    Keys: delta (down-ratio difference), information (1 / its variance), log_lr_promote and
    log_lr_retire (each test's log mixture likelihood ratio; it decides at log(1/level)), and
    code (CONTINUE, PROMOTE, RETIRE_EVIDENCE, RETIRE_PLANNED). Below ``min_votes`` a side, the
    normal approximation is not trusted: CONTINUE.
    """
    import numpy as np

    d1, n1 = np.asarray(challenger_down, float), np.asarray(challenger_total, float)
    d0, n0 = np.asarray(champion_down, float), np.asarray(champion_total, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where((n1 > 0) & (n0 > 0), d1 / n1 - d0 / n0, 0.0)
        # The variance from ratios shrunk towards 1/2 (one vote each way added): an observed
        # ratio of 0 or 1 must not claim infinite information.
        p1, p0 = (d1 + 1) / (n1 + 2), (d0 + 1) / (n0 + 2)
        variance = p1 * (1 - p1) / np.maximum(n1, 1) + p0 * (1 - p0) / np.maximum(n0, 1)
    information = 1.0 / variance
    root = np.sqrt(information)
    m = design.margin
    promote = _log_mixture_lr((delta - m) * root, information, design.tau)
    retire = _log_mixture_lr(-(delta + m) * root, information, design.tau)
    enough = (n1 >= design.min_votes) & (n0 >= design.min_votes)
    code = np.where(
        ~enough,
        CONTINUE,
        np.where(
            promote >= math.log(1 / design.false_promotion_rate),
            PROMOTE,
            np.where(
                retire >= math.log(1 / design.futility_rate),
                RETIRE_EVIDENCE,
                np.where(information >= design.max_information, RETIRE_PLANNED, CONTINUE),
            ),
        ),
    )
    return {
        "delta": delta,
        "information": information,
        "log_lr_promote": promote,
        "log_lr_retire": retire,
        "code": code,
    }


def judge(
    challenger: Votes, champion: Votes, design: Design
) -> tuple[str | None, str, dict[str, float]]:
    """(verdict or None to go on, reason, the poll's statistic) for one poll's votes."""
    e = evidence(challenger.down, challenger.total, champion.down, champion.total, design)
    point = {
        "challenger_votes": challenger.total,
        "champion_votes": champion.total,
        "delta": round(float(e["delta"]), 6),
        "information": round(float(e["information"]), 3),
        "log_lr_promote": round(float(e["log_lr_promote"]), 4),
        "log_lr_retire": round(float(e["log_lr_retire"]), 4),
    }
    code = int(e["code"])
    numbers = (
        f"down-vote ratio challenger {challenger.describe()} vs champion {champion.describe()}, "
        f"information {point['information']:.0f} of {design.max_information:.0f} planned"
    )
    if code == PROMOTE:
        why = f"better than worse-by-{design.margin:g} at level {design.false_promotion_rate:g}"
        return "promoted", f"{numbers}: {why} ({design.describe()})", point
    if code == RETIRE_EVIDENCE:
        why = f"not better by {design.margin:g}, at level {design.futility_rate:g}"
        return "retired", f"{numbers}: {why} ({design.describe()})", point
    if code == RETIRE_PLANNED:
        why = "the planned votes reached without evidence that it is better"
        return "retired", f"{numbers}: {why} ({design.describe()})", point
    return None, numbers, point


def split(votes: Mapping[str, Votes], version: str) -> tuple[Votes, Votes, list[str]]:
    """(the challenger's votes, the rest of the traffic's, the versions that rest was)."""
    others = sorted(v for v, counted in votes.items() if v != version and counted.total)
    rest = Votes()
    for other in others:
        rest = rest + votes[other]
    return votes.get(version, Votes()), rest, others


def run(
    settings: Settings,
    *,
    version: str | None = None,
    promotion: str | None = None,
    lineage: Mapping[str, str] | None = None,
    report: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryDecision:
    """Watch a challenger's votes until they decide, or the deadline does (see the module)."""
    lineage = dict(lineage or {})
    tracking.bound_client_retries(settings)  # MLflow down: exit 69 in seconds, not ~250 s
    # 1. Which challenger, since when.
    if version is None:
        version = _challenger_to_watch(settings, promotion)
    if version is None:
        why = "the gate started no canary" if promotion else "there is no challenger"
        decision = CanaryDecision("skipped", None, why)
        log.info("canary: nothing to decide (%s)", why)
        _write(settings, report, decision)
        return decision
    tags = registry.version_tags(settings, version)
    if tags.get(DECISION_TAG) in ("promoted", "retired"):
        log.info("canary of version %s already decided: finishing it", version)
        done = tags.get(RECORDED_TAG) == "true"
        return _finish(settings, _recorded(tags, version), lineage, report, recorded=done)
    url = settings.canary.prometheus_url
    if not url:
        raise ConfigError(
            "canary.prometheus_url is not set: the canary reads votes from Prometheus. "
            "Set BIGBERTHA_CANARY__PROMETHEUS_URL (the chart sets it from monitoring.prometheusUrl)"
        )
    started = _started(tags)
    if started is None:  # the alias was set by hand: the canary starts now
        started = start(settings, version)
        tags = registry.version_tags(settings, version)  # with the baseline start recorded
    c = settings.canary
    deadline = started + c.deadline_seconds
    recorder = _recorder(settings)
    name = settings.mlflow.model_name

    design = Design.from_settings(settings)
    log.info("canary of version %s: %s", version, design.describe())
    baseline = _baseline(settings, version, tags, started)

    # 2. Poll until the sequential test decides, or the deadline.
    polls, verdict, reason = 0, None, ""
    statistic: list[dict[str, float]] = []  # every poll's point, for the report
    challenger_votes, champion_votes, others = Votes(), Votes(), list[str]()
    through: tuple[float, float] | None = None
    while True:
        now = time.time()
        polls += 1
        try:
            current = registry.alias_version(settings, registry.CHALLENGER)
            if current != version:
                return _withdrawn(settings, version, current, started, polls, report)
            recorder.set_canary(version, started)  # re-asserted: Redis may have lost it
            if baseline is None:
                baseline = _baseline(settings, version, tags, started)
            assert baseline is not None
            counted = votes_api.gained(
                url, name, baseline, selector=c.prometheus_selector, now=min(now, deadline)
            )
            through = votes_api.scraped(url, name, c.prometheus_selector, min(now, deadline))
        except ServiceUnavailable as exc:
            if now >= deadline:
                raise  # no evidence at the deadline: the workflow retries the step
            log.warning("canary of version %s: %s; polling on", version, exc)
        else:
            challenger_votes, champion_votes, others = split(counted, version)
            verdict, reason, point = judge(challenger_votes, champion_votes, design)
            statistic.append({"t": round(min(now, deadline) - started, 1), **point})
            log.info(
                "canary of version %s: %s; log LR promote %.2f (decides at %.2f), retire %.2f"
                " (at %.2f)",
                version,
                reason,
                point["log_lr_promote"],
                math.log(1 / design.false_promotion_rate),
                point["log_lr_retire"],
                math.log(1 / design.futility_rate),
            )
            if verdict is None and now >= deadline:
                verdict, reason = _deadline_outcome(settings, challenger_votes, champion_votes)
            if verdict == "promoted":
                verdict, reason = _people_floor(
                    settings, recorder, version, reason, now >= deadline
                )
        if verdict is not None:
            break
        sleep(max(0.0, min(c.poll_seconds, deadline - now)))

    # 3. and 4. Decide; record it, move the aliases, log and count it.
    decided = time.time()
    champion = registry.alias_version(settings, registry.CHAMPION)
    decision = CanaryDecision(
        verdict,
        version,
        reason,
        champion_before=champion,
        champion_after=version if verdict == "promoted" else champion,
        challenger=_votes_doc(challenger_votes),
        champion=_votes_doc(champion_votes),
        champion_versions=others,
        share=c.share,
        min_votes=c.min_votes,
        margin=c.margin,
        design=dataclasses.asdict(design),
        statistic=statistic,
        started_at=started,
        decided_at=decided,
        seconds=decided - started,
        polls=polls,
        counted_through=list(through) if through else None,
    )
    return _finish(settings, decision, lineage, report)


def _baseline(
    settings: Settings, version: str, tags: Mapping[str, str], started: float
) -> votes_api.Counts | None:
    """The vote counters at the canary's start: as `start` recorded them from Redis, or (Redis
    was unreachable then) as Prometheus kept them, recorded now so no later poll asks again.
    None while Prometheus cannot say (the caller polls on)."""
    try:
        return votes_api.decode(tags[BASELINE_TAG])
    except (KeyError, ValueError, TypeError):
        pass
    c = settings.canary
    assert c.prometheus_url
    try:
        counts = votes_api.counters(
            c.prometheus_url, settings.mlflow.model_name, c.prometheus_selector, started
        )
    except ServiceUnavailable as exc:
        log.warning("canary of version %s: no baseline yet (%s)", version, exc)
        return None
    log.warning(
        "canary of version %s: its start recorded no vote baseline (Redis was unreachable); "
        "taken from Prometheus at the start instead",
        version,
    )
    registry.set_tags(settings, version, {BASELINE_TAG: votes_api.encode(counts)})
    return counts


def _people_floor(
    settings: Settings, recorder: Any, version: str, reason: str, past_deadline: bool
) -> tuple[str | None, str]:
    """A promotion needs canary.min_voters distinct people's votes on the challenger (its
    pseudonyms, in Redis): short of them it waits, or past the deadline retires. A few people's
    many votes are evidence about those people, not about the users."""
    needed = settings.canary.min_voters
    if needed <= 1:
        return "promoted", reason
    people = recorder.voters(version)
    if people is not None and people >= needed:
        return "promoted", f"{reason}; {people} people voted on it"
    counted = "unknown (Redis unreachable)" if people is None else str(people)
    short = f"{reason}; but {counted} people voted on it, {needed} needed (canary.min_voters)"
    return ("retired", short) if past_deadline else (None, short)


def _deadline_outcome(settings: Settings, challenger: Votes, champion: Votes) -> tuple[str, str]:
    c = settings.canary
    numbers = (
        f"{NOT_ENOUGH_VOTES} by the deadline ({c.deadline_seconds:g}s): challenger "
        f"{challenger.total}, champion {champion.total} votes, and the sequential test "
        "had not decided"
    )
    if c.on_deadline == "promote":
        return "promoted", f"{numbers}; canary.on_deadline is promote"
    return "retired", numbers


def _challenger_to_watch(settings: Settings, promotion: str | None) -> str | None:
    """The version the gate made challenger (its report), or the current challenger."""
    if promotion is None:
        return registry.alias_version(settings, registry.CHALLENGER)
    try:
        gate = json.loads(storage.read_bytes(settings, promotion))
        decision, version = gate["decision"], gate["version"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--promotion {promotion}: not a promote report ({exc})") from None
    return str(version) if decision == "challenger" and version is not None else None


def _recorded(tags: Mapping[str, str], version: str) -> CanaryDecision:
    """A decision as its tags recorded it (to finish a step that failed half-way)."""
    doc = json.loads(tags.get("canary.report", "{}") or "{}")
    doc.update(decision=tags[DECISION_TAG], version=version)
    doc.setdefault("reason", tags.get("canary.reason", ""))
    known = CanaryDecision.__dataclass_fields__
    return CanaryDecision(**{k: v for k, v in doc.items() if k in known})


def _withdrawn(
    settings: Settings,
    version: str,
    current: str | None,
    started: float,
    polls: int,
    report: str | None,
) -> CanaryDecision:
    now_challenger = f"version {current}" if current else "none"
    decision = CanaryDecision(
        "withdrawn",
        version,
        f"no longer the challenger (the challenger is now {now_challenger})",
        started_at=started,
        decided_at=time.time(),
        polls=polls,
    )
    decision.seconds = time.time() - started
    _recorder(settings).end_canary(version)  # the alias is gone, whoever removed it
    log.info("canary of version %s: %s", version, decision.reason)
    _write(settings, report, decision)
    return decision


def _finish(
    settings: Settings,
    decision: CanaryDecision,
    lineage: Mapping[str, str],
    report: str | None = None,
    *,
    recorded: bool = False,
) -> CanaryDecision:
    """Record the decision on the version, move the aliases, then log and count it.

    Safe to run again after a failure half-way: the alias moves are idempotent, and the run
    and the counter are skipped once the version says they were done (`recorded`).
    """
    assert decision.version is not None
    version = decision.version
    summary = {k: v for k, v in decision.to_json().items() if k != "reason"}
    summary["statistic"] = _thinned(decision.statistic)
    if not recorded:
        registry.set_tags(
            settings,
            version,
            {
                DECISION_TAG: decision.decision,
                "canary.reason": decision.reason[:4000],
                "canary.report": json.dumps(summary),
            },
        )
    if decision.decision == "promoted":
        registry.promote(settings, version)
        decision.champion_after = version
    registry.clear_challenger(settings, version)
    recorder = _recorder(settings)
    recorder.end_canary(version)
    if not recorded:
        _log_run(settings, decision, lineage)
        recorder.record_promotion(decision.decision)
        registry.set_tags(settings, version, {RECORDED_TAG: "true"})
    log.info(
        "canary of %s version %s: %s (%s)",
        settings.mlflow.model_name,
        version,
        decision.decision,
        decision.reason,
    )
    _write(settings, report, decision)
    return decision


def _thinned(points: list[dict[str, float]], keep: int = 24) -> list[dict[str, float]]:
    """At most `keep` of the polls' points, evenly spread, the last one always kept: what fits
    on the version's tag (the report and the MLflow run keep them all)."""
    if len(points) <= keep:
        return points
    step = (len(points) - 1) / (keep - 1)
    return [points[round(i * step)] for i in range(keep)]


def _log_run(settings: Settings, decision: CanaryDecision, lineage: Mapping[str, str]) -> None:
    """An MLflow run with the decision, its numbers and the alert's lineage."""
    import mlflow

    registry.client(settings)  # the tracking URI
    with registry.mlflow_errors(settings):
        mlflow.set_experiment(registry.EXPERIMENT)
        workflow = lineage.get("workflow_name") or "manual"
        with mlflow.start_run(run_name=f"canary-{workflow}-v{decision.version}"):
            mlflow.set_tags(
                {
                    "step": "canary",
                    "canary_for": decision.version,
                    "decision": decision.decision,
                    "reason": decision.reason[:4000],
                    **{k: v for k, v in lineage.items() if v},
                }
            )
            metrics: dict[str, float] = {}
            for side in ("challenger", "champion"):
                for key, value in getattr(decision, side).items():
                    if value is not None:
                        metrics[f"{side}_{key}"] = float(value)
            if decision.seconds is not None:
                metrics["seconds_to_decision"] = decision.seconds
            mlflow.log_metrics(metrics)
            mlflow.log_params(
                {
                    "share": decision.share,
                    "min_votes": decision.min_votes,
                    "margin": decision.margin,
                    **{f"design_{k}": v for k, v in decision.design.items()},
                }
            )
            if decision.statistic:
                mlflow.log_dict({"statistic": decision.statistic}, "canary_statistic.json")


def _write(settings: Settings, report: str | None, decision: CanaryDecision) -> None:
    if report:
        storage.write_bytes(settings, report, json.dumps(decision.to_json(), indent=2).encode())
