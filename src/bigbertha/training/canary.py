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
   (`bigbertha.telemetry.votes`), until both sides have ``canary.min_votes`` or the deadline
   (start + ``canary.deadline_seconds``, so a retried step never extends it) passes;
3. decides: promote when the challenger's down-vote ratio is at most the champion's plus
   ``canary.margin``, else retire; at the deadline without enough votes, ``canary.on_deadline``;
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

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.models import registry
from bigbertha.telemetry import votes as votes_api
from bigbertha.telemetry.votes import Votes

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

STARTED_TAG = "canary.started_at"
DECISION_TAG = "canary.decision"
RECORDED_TAG = "canary.recorded"  # the run and the counter are done too
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
    started_at: float | None = None
    decided_at: float | None = None
    seconds: float | None = None  # from the challenger's start to the decision
    polls: int = 0

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
    registry.set_tags(
        settings, version, {STARTED_TAG: repr(started), "canary.share": settings.canary.share}
    )
    # The alias moves in one step: no moment without a challenger, then the old one's books.
    replaced = registry.set_challenger(settings, version)
    _recorder(settings).set_canary(version, started)
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


def judge(
    challenger: Votes, champion: Votes, *, min_votes: int, margin: float
) -> tuple[str, str] | None:
    """("promoted" | "retired", reason) once both sides have `min_votes`, else None."""
    if challenger.total < min_votes or champion.total < min_votes:
        return None
    assert challenger.down_ratio is not None and champion.down_ratio is not None
    numbers = f"challenger {challenger.describe()} vs champion {champion.describe()}"
    if challenger.down_ratio <= champion.down_ratio + margin:
        return "promoted", f"down-vote ratio {numbers}: not worse by more than {margin:.2f}"
    return "retired", f"down-vote ratio {numbers}: worse by more than {margin:.2f}"


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
    c = settings.canary
    deadline = started + c.deadline_seconds
    recorder = _recorder(settings)
    name = settings.mlflow.model_name

    # 2. Poll until both sides have enough votes, or the deadline.
    polls, outcome = 0, None
    challenger_votes, champion_votes, others = Votes(), Votes(), list[str]()
    while True:
        now = time.time()
        polls += 1
        try:
            current = registry.alias_version(settings, registry.CHALLENGER)
            if current != version:
                return _withdrawn(settings, version, current, started, polls, report)
            recorder.set_canary(version, started)  # re-asserted: Redis may have lost it
            counted = votes_api.since(
                url, name, started, selector=c.prometheus_selector, now=min(now, deadline)
            )
        except ServiceUnavailable as exc:
            if now >= deadline:
                raise  # no evidence at the deadline: the workflow retries the step
            log.warning("canary of version %s: %s; polling on", version, exc)
        else:
            challenger_votes, champion_votes, others = split(counted, version)
            log.info(
                "canary of version %s: challenger %s, champion %s (%d needed each)",
                version,
                challenger_votes.describe(),
                champion_votes.describe(),
                c.min_votes,
            )
            outcome = judge(
                challenger_votes, champion_votes, min_votes=c.min_votes, margin=c.margin
            )
            if outcome is None and now >= deadline:
                outcome = _deadline_outcome(settings, challenger_votes, champion_votes)
        if outcome is not None:
            break
        sleep(max(0.0, min(c.poll_seconds, deadline - now)))

    # 3. and 4. Decide; record it, move the aliases, log and count it.
    verdict, reason = outcome
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
        started_at=started,
        decided_at=decided,
        seconds=decided - started,
        polls=polls,
    )
    return _finish(settings, decision, lineage, report)


def _deadline_outcome(settings: Settings, challenger: Votes, champion: Votes) -> tuple[str, str]:
    c = settings.canary
    numbers = (
        f"{NOT_ENOUGH_VOTES} by the deadline ({c.deadline_seconds:g}s): challenger "
        f"{challenger.total}, champion {champion.total} of {c.min_votes} needed each"
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
    if not recorded:
        registry.set_tags(
            settings,
            version,
            {
                DECISION_TAG: decision.decision,
                "canary.reason": decision.reason[:4000],
                "canary.report": json.dumps(summary)[:5000],
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
                }
            )


def _write(settings: Settings, report: str | None, decision: CanaryDecision) -> None:
    if report:
        storage.write_bytes(settings, report, json.dumps(decision.to_json(), indent=2).encode())
