"""The demo's scenario on a running platform: upload and ingest, ask, rate, the rounds.

A round is one turn of a loop that may move the champion; `Round` records what it did (the
answers before and after, the gate's decision and numbers) and `Round.summary()` says it in one
line. `quality_round` is the feedback loop's round; another kind of round fills the same record.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigbertha.local.canary import Side, canary_round, step
from bigbertha.local.platform import QUESTIONS, SEED_DOCS, LocalPlatform, chatbot_status
from bigbertha.local.timeline import DemoFailed, Stage, Timeline, prom_query, wait_for


def upload_documents(platform: LocalPlatform, timeline: Timeline) -> Stage:
    """Both ways documents reach Milvus, in the background (`wait_ingested` finishes the stage):
    the seed documents but the last are a bucket that already exists (`seed/`), ingested by the
    ingest-backfill Workflow; the last is a new upload (`uploads/`), whose MinIO-style
    notification goes to the gateway's /minio and starts an ingestion Workflow."""
    from bigbertha.core import storage

    bucket = platform.values["objectStorage"]["documentsBucket"]
    client = storage.open_client(platform.settings())
    *existing, uploaded = SEED_DOCS
    with timeline.stage("upload + ingest documents", finish=False) as stage:
        for rel in existing:
            client.put(bucket, f"seed/{Path(rel).name}", (platform.root / rel).read_bytes())
        platform.gateway.submit("ingest-backfill", {"prefix": f"s3://{bucket}/seed/"})
        path = platform.root / uploaded
        key = f"uploads/{path.name}"
        client.put(bucket, key, path.read_bytes())
        notification = minio_notification(bucket, key, path.stat().st_size)
        request = urllib.request.Request(
            f"{platform.urls['gateway']}/minio",
            data=json.dumps(notification).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {platform.token}",  # as the webhook's
            },
        )
        urllib.request.urlopen(request, timeout=10).read()
    return stage


def wait_ingested(platform: LocalPlatform, timeline: Timeline, stage: Stage) -> None:
    with timeline.stage(stage) as st:
        if not platform.gateway.wait(600):
            raise DemoFailed("ingestion workflows did not finish")
        runs = [r for r in platform.gateway.engine.runs if "ingest" in r.template]
        failed = [f"{r.name}: {r.message}" for r in runs if r.status != "Succeeded"]
        if failed:
            raise DemoFailed(f"ingestion failed: {failed}")
        [backfill] = [r for r in runs if r.template.endswith("-ingest-backfill")]
        # Each batch's summary (its output parameter): what the backfill ingested.
        summaries = [
            json.loads(s["outputs"]["summary"])
            for s in backfill.steps
            if s["name"].startswith("ingest(")
        ]
        documents = sum(summary["totals"]["ingested"] for summary in summaries)
        st.result = (
            f"{documents} documents backfilled in {len(summaries)} batch(es), "
            f"{len(runs) - 1} ingested on upload"
        )


def minio_notification(bucket: str, key: str, size: int) -> dict[str, Any]:
    """What a MinIO webhook notification target POSTs for a PUT (key query-escaped)."""
    escaped = urllib.parse.quote_plus(key)
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "eventName": "s3:ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": escaped, "size": size},
                },
            }
        ],
    }


def ask(platform: LocalPlatform, question: str, feedback: str | None = None) -> dict[str, Any]:
    """`bigbertha ask` through the running chatbot: its model, no model load per question."""
    argv = ["ask", question, "--json", "--server", platform.urls["chatbot"]]
    if feedback:
        argv += ["--feedback", feedback]
    result = platform.run(argv, timeout=300)
    if result.returncode != 0:
        raise DemoFailed(f"bigbertha ask failed: {result.stderr.strip()[-300:]}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def ask_all(
    platform: LocalPlatform, questions: Sequence[str], feedback: str | None = None
) -> list[dict[str, Any]]:
    """Each question through the running chatbot, as many at once as it answers at once
    (chat.max_concurrent_answers); answers in the questions' order, each with its rating."""
    from concurrent.futures import ThreadPoolExecutor

    at_once = int(platform.settings().chat.max_concurrent_answers)
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        answers = list(pool.map(lambda q: ask(platform, q, feedback=feedback), questions))
    return [{**answer, "rating": feedback} for answer in answers]


@dataclass
class Round:
    """One round of a loop that may move the champion, and what it did."""

    number: int
    margin: float
    kind: str = "quality"
    served_before: str = ""
    workflow: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)  # the gate's decision (last_decision)
    champion_after: str | None = None
    marks: dict[str, float] = field(default_factory=dict)  # plotted moments (epoch seconds)
    answers_before: list[dict[str, Any]] = field(default_factory=list)  # with "rating"
    answers_after: list[dict[str, Any]] = field(default_factory=list)  # the same questions

    @property
    def promoted(self) -> bool:
        return bool(self.champion_after) and self.champion_after != self.served_before

    def summary(self) -> str:
        """One line: promoted or kept, and by how much on each gate metric."""
        from bigbertha.training.promote import improvement

        numbers = []
        for metric, sides in (self.outcome.get("metrics") or {}).items():
            try:
                champion, challenger = float(sides["champion"]), float(sides["challenger"])
            except (KeyError, TypeError, ValueError):
                continue
            if str(sides.get("verdict", "")).startswith("info"):
                continue  # the report shows every metric; the line shows the decided ones
            gain = improvement(metric, challenger, champion)
            ci = f", change CI {sides['interval']}" if sides.get("interval") else ""
            numbers.append(f"{metric} {champion:.4g} -> {challenger:.4g} ({gain:+.1%}{ci})")
        by = f": {', '.join(numbers)}" if numbers else ""
        version = self.outcome.get("version", "?")
        canary = self.outcome.get("canary") or {}
        live = f"; live canary: {canary.get('reason', '')}" if canary else ""
        if self.promoted:
            head = f"promoted version {self.champion_after} over {self.served_before}"
        elif canary:  # past the offline gate (its numbers favoured it), retired on live votes
            return (
                f"round {self.number} ({self.kind}): kept champion {self.served_before} "
                f"(challenger version {version} retired by the live canary: "
                f"{canary.get('reason', '')})"
            )
        else:
            head = f"kept champion {self.served_before} (challenger version {version})"
        return f"round {self.number} ({self.kind}): {head}{by}; margin {self.margin:.0%}{live}"


def quality_round(
    platform: LocalPlatform, timeline: Timeline, rnd: Round, prefer: Side = "challenger"
) -> Round:
    """Rate answers down until the retrain alert fires; follow the Workflow to the gate and,
    when the gate made a challenger, through its live canary (raters who `prefer` one side)."""
    from bigbertha.models import registry

    tag = f"round {rnd.number}: "
    platform.env["BIGBERTHA_PROMOTE__MARGIN"] = str(rnd.margin)  # read by the workflow steps
    known = {r.name for r in platform.gateway.engine.runs if "finetune" in r.template}
    with timeline.stage(tag + "questions, rated down") as st:
        rnd.answers_before = ask_all(platform, QUESTIONS, feedback="down")
        versions = {str(a.get("model_version")) for a in rnd.answers_before}
        if len(versions) != 1:
            raise DemoFailed(f"answers came from several model versions: {sorted(versions)}")
        rnd.served_before = versions.pop()
        st.result = f"{len(QUESTIONS)} answers from version {rnd.served_before}, all rated down"
    with timeline.stage(tag + "retrain alert fires") as st:
        query = (
            'ALERTS{alertname="BigBerthaNegativeFeedbackHigh",alertstate="firing",'
            f'model_version="{rnd.served_before}"}}'
        )
        unhappy = UnhappyUsers(platform, rnd.served_before)
        wait_for("the retrain alert", lambda: unhappy.until(query), 300, 2)
        more = f" (after {unhappy.extra} more down votes)" if unhappy.extra else ""
        st.result = f"BigBerthaNegativeFeedbackHigh firing for version {rnd.served_before}{more}"
    with timeline.stage(tag + "alertmanager -> gateway") as st:
        run = wait_for(
            "a retraining workflow",
            lambda: next(
                (
                    r
                    for r in platform.gateway.engine.runs
                    if "finetune" in r.template and r.name not in known
                ),
                None,
            ),
            300,
            1,
        )
        rnd.workflow = run.name
        st.result = f"workflow {run.name} (alert {run.arguments.get('alert-name')})"
    with timeline.stage(tag + "prepare, finetune, evaluate, gate") as st:
        # The gate is the promote step; a canary step after it waits for users' votes.
        wait_for("the offline gate", lambda: step(run, "promote") or run.finished, 1200, 2)
        rnd.marks["retrain_started"] = run.started
        steps = ", ".join(
            f"{s['name']} {s['finished'] - s['started']:.0f}s" for s in run.steps if "finished" in s
        )
        st.result = f"{run.status}: {steps}"
        if run.finished and run.status != "Succeeded":
            raise DemoFailed(f"retraining failed: {run.message}")
    with timeline.stage(tag + "promotion gate") as st:
        settings = platform.settings()
        rnd.champion_after = registry.alias_version(settings, "champion")
        rnd.outcome = last_decision(settings)
        moved = f"champion {rnd.served_before} -> {rnd.champion_after}"
        if rnd.outcome.get("decision") == "challenger":
            moved = f"version {rnd.outcome.get('version')} goes on a live canary"
        st.result = f"{rnd.outcome.get('decision', '?')}: {moved} ({rnd.outcome.get('reason', '')})"
    if rnd.outcome.get("decision") == "challenger":
        rnd.outcome["canary"] = canary_round(
            platform,
            timeline,
            run,
            number=rnd.number,
            challenger=str(rnd.outcome.get("version")),
            prefer=prefer,
        )
    wait_for("the retraining workflow", lambda: run.finished, 600, 1)
    rnd.marks["retrain_finished"] = run.finished
    if run.status != "Succeeded":
        raise DemoFailed(f"retraining failed: {run.message}")
    rnd.champion_after = registry.alias_version(settings, "champion")
    if rnd.promoted:
        rnd.marks["promoted"] = (rnd.outcome.get("canary") or {}).get("decided_at") or time.time()
    timeline.data.setdefault("rounds", []).append(rnd)
    return rnd


class UnhappyUsers:
    """More users vote a version down, one every 10 s, until its retrain alert fires: earlier
    votes in the alert's window (a canary's, mostly up) can hold its ratio under the threshold."""

    def __init__(self, platform: LocalPlatform, version: str) -> None:
        self.platform, self.version = platform, version
        self.extra = 0
        self._next = time.monotonic() + 30  # first, the alert's own `for` and a scrape or two
        self._questions = itertools.cycle(QUESTIONS)

    def until(self, query: str) -> bool:
        from bigbertha.chat.api import ask_server
        from bigbertha.local.canary import rater_address

        if prom_query(self.platform.prometheus, query):
            return True
        if time.monotonic() >= self._next:
            url = self.platform.urls["chatbot"]
            # Each is another person (the `rater_address` block 1: not a canary rater).
            source = rater_address(self.extra, block=1)
            answer = ask_server(
                url, next(self._questions), rating="down", timeout=300, source_address=source
            )
            if str(answer.get("model_version")) != self.version:
                raise DemoFailed(
                    f"answer came from {answer.get('model_version')}, not the "
                    f"version under test {self.version}"
                )
            self.extra += 1
            self._next = time.monotonic() + 10
        return False


def last_decision(settings: Any) -> dict[str, Any]:
    """The promotion gate's decision as recorded on the newest registered version's tags."""
    from bigbertha.models import registry

    name = settings.mlflow.model_name
    versions = registry.client(settings).search_model_versions(f"name='{name}'")
    if not versions:
        return {"decision": "none", "reason": "no version was registered"}
    newest = max(versions, key=lambda v: int(v.version))
    tags = dict(newest.tags)
    metrics: dict[str, dict[str, Any]] = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "gate" and parts[2] in _GATE_FIELDS:
            metrics.setdefault(parts[1], {})[parts[2]] = value
    return {
        "version": str(newest.version),
        "decision": tags.get("gate.decision", "none"),
        "reason": tags.get("gate.reason", ""),
        "evidence": tags.get("gate.evidence", ""),
        "eval_set": f"{tags.get('gate.eval_set', '?')} (sha256 {tags.get('eval_hash', '?')[:12]}, "
        f"{tags.get('gate.examples', '?')} examples, {tags.get('gate.confidence', '?')} intervals)",
        "metrics": metrics,
    }


# Per gate metric, the tags promote sets: both sides, the interval of the change, the verdict.
_GATE_FIELDS = ("champion", "challenger", "interval", "verdict")


def champion_answers(
    platform: LocalPlatform, timeline: Timeline, rnd: Round, *, all_questions: bool = True
) -> None:
    """The running chatbot hot-swapped to the round's champion (no restart): its status says
    so, and its answers, to the questions asked before the round, report the champion's
    version (`rnd.answers_after`, unrated: the report shows them beside the old ones)."""
    expected = str(rnd.champion_after)
    url = platform.urls["chatbot"]
    with timeline.stage("chatbot serves the champion") as st:
        status = wait_for(
            f"the chatbot's hot swap to version {expected}",
            lambda: (s := chatbot_status(url)).get("model_version") == expected and s,
            180,
            1,
        )
        questions = QUESTIONS if all_questions else QUESTIONS[:1]
        answers = ask_all(platform, questions)
        served = {str(a.get("model_version")) for a in answers}
        if served != {expected}:
            raise DemoFailed(f"answers came from {sorted(served)}, expected champion {expected}")
        if all_questions:
            rnd.answers_after = answers
        st.result = (
            f"chatbot hot-swapped to model version {expected} (swaps {status['swaps']}); "
            f"{len(answers)} answers from model version {expected}"
        )
