"""The promotion gate: register a challenger, benchmark it against the champion, decide.

    bigbertha promote --challenger s3://runs/wf-1/adapter --data s3://datasets/eval.jsonl \\
        --alert-name BigBerthaNegativeFeedbackHigh --workflow-name wf-1
    bigbertha promote --rollback

`run` registers the challenger as a new version of ``mlflow.model_name`` with lineage tags,
evaluates the champion (or, before there is one, the challenger's own base model) and the
challenger on the same evaluation set of record, each question retrieved once as the chatbot
retrieves it (`bigbertha.training.evaluate`), and decides by the rule in ``promote``
(`bigbertha.training.comparison`): paired bootstrap intervals of challenger minus champion; every
target metric (``gate_metrics``) better by more than ``margin`` across its interval, no guard
metric (``guard_metrics``) worse than its tolerance. Too few examples or an interval too wide to
tell is "not enough evidence": the champion stays and the reason says so. A passed challenger
becomes champion at once when ``canary.share`` is 0; otherwise it becomes the registry's
``challenger`` and serves that share of new conversations until the live canary
(`bigbertha.training.canary`) promotes or retires it. The evaluate step's report on the same
challenger and the same prompts (``--evaluation``) is reused instead of benchmarking it twice,
and so is the champion's own earlier evaluation (`evaluate.cached_report`). The old champion
keeps ``previous``. The decision, every interval and the evaluation set's hash are tags on the
new version and a JSON report; telemetry counts it (`Recorder.record_promotion`). The alias
moves last, so any failure leaves the champion as it was.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import BigberthaError, ConfigError
from bigbertha.models import loading, registry, tracking
from bigbertha.training import canary, comparison, evaluate

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

GATE_DECISION = "gate.decision"  # set on every version the gate decided on


@dataclass
class Decision:
    """What the gate decided, and why."""

    decision: str  # promoted | rejected | rollback | challenger (passed; the canary decides)
    version: str | None  # the challenger (or, for a rollback, the restored champion)
    champion_before: str | None
    champion_after: str | None
    reason: str
    margin: float = 0.0
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> comparison
    evidence: str = "sufficient"  # insufficient: too few examples or too wide an interval
    eval_set: str = ""  # the evaluation set's name and hash

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def improvement(metric: str, challenger: float, champion: float) -> float:
    """Relative improvement of the challenger (positive = better; perplexity is lower-better)."""
    if metric in comparison.LOWER_IS_BETTER:
        challenger, champion = -challenger, -champion
    if not math.isfinite(champion):
        return math.inf if math.isfinite(challenger) else 0.0
    if not math.isfinite(challenger):
        return -math.inf
    if champion == 0:
        return math.inf if challenger > 0 else (0.0 if challenger == 0 else -math.inf)
    return (challenger - champion) / abs(champion)


def settle_ungated(
    settings: Settings,
    *,
    challenger: str | None = None,
    workflow_name: str | None = None,
    ended_workflow: str | None = None,
) -> str | None:
    """Versions a gate registered but never decided on (MLflow failed, or the step was killed,
    right after registering): the one registered from `challenger` by an earlier try of this
    step (same `workflow_name`) or by a process that is gone is returned, to be gated now
    instead of registered twice; every other abandoned one is tagged rejected with the reason.
    A version whose gate may still be running (`tracking.abandoned`) is left alone."""
    resume = None
    aliased = registry.aliased_versions(settings)
    for mv in sorted(registry.versions(settings), key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags)
        if tracking.HOST_TAG not in tags or GATE_DECISION in tags or str(mv.version) in aliased:
            continue
        why = tracking.abandoned(
            tags,
            mv.creation_timestamp,
            stale_after=settings.retrain.stale_after_seconds,
            ended_workflow=ended_workflow,
        )
        ours = bool(workflow_name) and tags.get("workflow_name") == workflow_name
        if challenger and tags.get("source") == challenger and (ours or why) and not resume:
            log.warning("version %s of %s was never gated: gating it now", mv.version, challenger)
            resume = str(mv.version)
        elif why:
            reason = f"never gated: the promote step that registered it stopped first ({why})"
            # The decision goes last: a version that has it was decided completely.
            registry.set_tags(
                settings, str(mv.version), {"gate.reason": reason, GATE_DECISION: "rejected"}
            )
            log.warning("version %s tagged rejected: %s", mv.version, reason)
    return resume


def register(settings: Settings, challenger: str, lineage: Mapping[str, str]) -> str:
    """Register `challenger` (adapter path or s3:// prefix) unless it is already a version, or
    an earlier try registered it and never gated it (`settle_ungated`)."""
    source = loading.resolve(challenger, settings)
    if challenger.startswith("models:/"):
        return source.version
    ungated = settle_ungated(
        settings, challenger=challenger, workflow_name=lineage.get("workflow_name")
    )
    if ungated:
        return ungated
    tags = {
        "base_model": str(source.lineage.get("base_model") or source.base or ""),
        "dataset_hash": str(source.lineage.get("dataset_hash", "")),
        "alert_name": str(source.lineage.get("alert_name", "")),
        "alert_labels": str(source.lineage.get("alert_labels", "")),
        "workflow_name": str(source.lineage.get("workflow_name", "")),
        "source": challenger,
    }
    tags.update({k: v for k, v in lineage.items() if v})
    tags.update(tracking.owner_tags())  # whose gate it awaits: see settle_ungated
    return registry.register_challenger(
        settings, Path(source.location), tags, loading.pyfunc_model()
    )


def reusable_evaluation(
    settings: Settings, uri: str, challenger: str, eval_hash: str, key: str
) -> evaluate.EvalReport | None:
    """The evaluate step's report at `uri` if it scored `challenger` on the evaluation set the
    gate uses now (`eval_hash`), on the same retrieved prompts with the same settings (`key`,
    `evaluate.score_key`), example by example; else None, and why."""
    try:
        report = evaluate.EvalReport.from_json(json.loads(storage.read_bytes(settings, uri)))
    except (BigberthaError, ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning(
            "evaluation report %s unusable (%s): benchmarking the challenger again", uri, why
        )
        return None
    problems = []
    if report.model != challenger:
        problems.append(f"it is for {report.model!r}")
    if report.eval_hash != eval_hash:
        problems.append("its evaluation set differs")
    if report.key != key:
        problems.append("its prompts or settings differ (retrieval or generation changed)")
    if not report.scores:
        problems.append("it lacks per-example scores")
    if problems:
        log.warning(
            "evaluation report %s not reused (%s): benchmarking the challenger again",
            uri,
            "; ".join(problems),
        )
        return None
    log.info("reusing the challenger's evaluation from %s", uri)
    return report


def _record(settings: Settings, decision: str) -> None:
    from bigbertha.telemetry.recorder import Recorder

    Recorder.from_settings(settings).record_promotion(decision)


def run(
    settings: Settings,
    challenger: str,
    *,
    data: str | None = None,
    lineage: Mapping[str, str] | None = None,
    report: str | None = None,
    evaluation: str | None = None,
) -> Decision:
    """Register, benchmark both sides on one evaluation set; if better, start a canary or (with
    ``canary.share`` 0) move ``champion``.

    `evaluation`: the challenger's report from `bigbertha evaluate`, reused when it matches.
    """
    tracking.bound_client_retries(settings)
    lineage = dict(lineage or {})
    name = settings.mlflow.model_name
    # 1. Register the challenger: it is kept (and traceable) whatever the gate decides.
    version = register(settings, challenger, lineage)
    champion = registry.alias_version(settings, registry.CHAMPION)
    if champion == version:
        return Decision("rejected", version, champion, champion, "already the champion")
    baseline = (
        f"models:/{name}/{champion}"
        if champion
        else registry.version_tags(settings, version).get("base_model")
    )
    if not baseline:
        raise ConfigError(f"version {version} has no base_model tag to compare with")

    # 2. Benchmark both on the same set, each question retrieved once for both.
    tags = {**lineage, "gate_for": version}  # the gate's runs carry the alert's lineage too
    _, eval_set = evaluate.load_eval_set(settings, data)
    prepared = evaluate.prepare(settings, eval_set.items)
    challenger_ref = f"models:/{name}/{version}"
    reused = None
    if evaluation:
        key = evaluate.score_key(settings, challenger, prepared)
        reused = reusable_evaluation(settings, evaluation, challenger, eval_set.hash, key)
    if reused:  # filed under the version too: as the next gate's champion it costs nothing
        evaluate.remember_as(settings, reused, challenger_ref, eval_set, prepared)
    theirs = reused or evaluate.run(
        settings, challenger_ref, eval_set=eval_set, prepared=prepared, tags=tags
    )
    ours = evaluate.run(settings, baseline, eval_set=eval_set, prepared=prepared, tags=tags)

    # 3. Decide by the rule; record the evidence on the version; move the alias last.
    rule = settings.promote
    outcome = comparison.decide(
        theirs.scores,
        ours.scores,
        targets=rule.gate_metrics,
        guards={str(k): v for k, v in rule.guard_metrics.items()},
        margin=rule.margin,
        confidence=rule.confidence,
        min_examples=rule.min_examples,
        resamples=rule.bootstrap_resamples,
        informational=["perplexity", *evaluate.PER_EXAMPLE],  # the report shows every metric
    )
    passed, reason = outcome.passed, outcome.reason
    if not champion:
        reason = f"no champion yet; against base {baseline}: {reason}"
    named = f"{eval_set.name} (sha256 {eval_set.hash[:12]}, {len(prepared)} examples)"
    reason = f"{reason} [evaluation set {named}]"
    live = passed and settings.canary.share > 0
    verdict = "rejected" if not passed else "challenger" if live else "promoted"
    table = {m: c.to_json() for m, c in outcome.metrics.items()}
    decision = Decision(
        verdict, version, champion, champion, reason, rule.margin, table, outcome.evidence, named
    )
    gate_tags: dict[str, Any] = {
        "gate.reason": reason[:4000],
        "gate.evidence": outcome.evidence,
        "gate.margin": rule.margin,
        "gate.confidence": rule.confidence,
        "gate.baseline": baseline,
        "gate.eval_hash": eval_set.hash,
        "gate.eval_set": eval_set.name[:4000],
        "gate.examples": len(prepared),
        "eval_hash": eval_set.hash,
        "gate.challenger_evaluation": evaluation if reused else "evaluated by the gate",
    }
    for metric, c in outcome.metrics.items():
        gate_tags[f"gate.{metric}.challenger"] = f"{c.challenger:.6g}"
        gate_tags[f"gate.{metric}.champion"] = f"{c.champion:.6g}"
        gate_tags[f"gate.{metric}.interval"] = f"{c.low:.6g}..{c.high:.6g}"
        gate_tags[f"gate.{metric}.verdict"] = f"{c.role} {c.verdict}"
    if not live:
        gate_tags[GATE_DECISION] = decision.decision  # last: a version with it is fully decided
    registry.set_tags(settings, version, gate_tags)
    if live:
        canary.start(settings, version)
        # Fully decided once its canary runs (settle_ungated leaves an aliased version alone).
        registry.set_tags(settings, version, {GATE_DECISION: decision.decision})
        decision.reason += (
            f"; challenger for {settings.canary.share:.0%} of new conversations until the "
            "live canary decides"
        )
    elif passed:
        registry.promote(settings, version)
        decision.champion_after = version
    log.info("promotion gate for %s version %s: %s (%s)", name, version, decision.decision, reason)
    _record(settings, decision.decision)
    if report:
        storage.write_bytes(settings, report, json.dumps(decision.to_json(), indent=2).encode())
    return decision


def rollback(settings: Settings, *, report: str | None = None) -> Decision:
    """Move ``champion`` back to ``previous`` and count it."""
    tracking.bound_client_retries(settings)
    current, target = registry.rollback(settings)
    registry.set_tags(settings, target, {"rollback.restored_from": current})
    decision = Decision("rollback", target, current, target, f"rolled back from version {current}")
    log.info("rolled back %s: champion %s -> %s", settings.mlflow.model_name, current, target)
    _record(settings, "rollback")
    if report:
        storage.write_bytes(settings, report, json.dumps(decision.to_json(), indent=2).encode())
    return decision
