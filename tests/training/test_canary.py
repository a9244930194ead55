"""The live canary decides from real votes: the recorder writes users' ratings to a real Redis,
two real exporters (as prod runs two replicas) serve them, a real Prometheus scrapes them, and
the canary reads them back and moves the aliases of a real MLflow registry.

Promote, reject, not enough votes, the deadline (and its configurable outcome), votes arriving
while it waits, an unreachable Prometheus, a challenger withdrawn or superseded meanwhile, a
retried step, and the retrain exit handler retiring an orphaned canary.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.core.settings import Settings, load
from bigbertha.models import registry
from bigbertha.telemetry import votes
from bigbertha.telemetry.recorder import Recorder
from bigbertha.telemetry.votes import Votes
from bigbertha.training import canary, retrain
from tests.services import Service, ServiceManager, free_port
from tests.training.helpers import telemetry_counts

JOB, NAMESPACE = "bigbertha-exporter", "bigbertha"
SELECTOR = f'job="{JOB}",namespace="{NAMESPACE}"'


# --- the decision rule itself ---------------------------------------------------------------


#: The real-stack tests' design (values/demo.yaml's): ratios 0.25 apart decide in ~10 votes a side.
DEMO = {"margin": 0.25, "false_promotion_rate": 0.1, "min_votes": 6, "baseline_down_ratio": 0.5}
DESIGN = canary.Design.plan(
    margin=0.25, false_promotion_rate=0.1, power=0.8, baseline=0.5, min_votes=6
)


@pytest.mark.parametrize(
    ("challenger", "champion", "verdict", "why"),
    [
        (Votes(up=8, down=2), Votes(up=4, down=6), "promoted", "better than worse-by-0.25"),
        (Votes(up=2, down=8), Votes(up=8, down=2), "retired", "not better by 0.25"),
        (Votes(up=5, down=5), Votes(up=5, down=5), None, "information 20 of 58"),  # equal: wait
        (Votes(up=5, down=0), Votes(up=0, down=30), None, ""),  # 5 votes: below min_votes
        # Equal ratios once the planned information is reached: retired without evidence.
        (Votes(up=15, down=15), Votes(up=15, down=15), "retired", "the planned votes reached"),
    ],
)
def test_judge_decides_by_the_sequential_test(
    challenger: Votes, champion: Votes, verdict: str | None, why: str
) -> None:
    outcome, reason, point = canary.judge(challenger, champion, DESIGN)
    assert outcome == verdict
    assert why in reason and f"challenger {challenger.describe()}" in reason
    assert point["challenger_votes"] == challenger.total


def test_the_design_states_its_planned_votes() -> None:
    """The defaults plan 668 votes a side (the values comment); a smaller margin needs more,
    and a stricter false-promotion rate too; the planned votes are in what the step logs."""
    default = canary.Design.plan(
        margin=0.05, false_promotion_rate=0.05, power=0.8, baseline=0.3, min_votes=20
    )
    assert default.planned_votes == 668
    assert DESIGN.planned_votes == 26
    wider = canary.Design.plan(
        margin=0.1, false_promotion_rate=0.05, power=0.8, baseline=0.3, min_votes=20
    )
    stricter = canary.Design.plan(
        margin=0.1, false_promotion_rate=0.01, power=0.8, baseline=0.3, min_votes=20
    )
    assert wider.planned_votes < stricter.planned_votes < default.planned_votes
    assert "within 668 votes a side" in default.describe()


def test_looking_every_poll_does_not_inflate_false_promotions() -> None:
    """2,000 canaries of a challenger exactly worse by the margin, judged after every vote
    (more often than any poll): promoted at most the configured rate, with room for noise.
    The fixed rule it replaced promoted about half of them (bench/canary_sim.py)."""
    import numpy as np

    rng = np.random.default_rng(5)
    n, promoted = 2000, np.zeros(2000, dtype=bool)
    done = np.zeros(n, dtype=bool)
    d1 = np.zeros(n)
    d0 = np.zeros(n)
    for count in range(1, 60):
        d1 += rng.random(n) < 0.75
        d0 += rng.random(n) < 0.5
        code = canary.evidence(d1, count, d0, count, DESIGN)["code"]
        promoted |= ~done & (code == canary.PROMOTE)
        done |= code != canary.CONTINUE
    assert done.mean() > 0.99  # everyone decided within the plan
    assert promoted.mean() <= 0.1


def test_the_rest_of_the_traffic_is_the_champion_side() -> None:
    counted = {"3": Votes(1, 2), "4": Votes(5, 1), "smollm2": Votes(0, 1), "2": Votes()}
    mine, rest, others = canary.split(counted, "4")
    assert mine == Votes(5, 1) and rest == Votes(1, 3) and others == ["3", "smollm2"]


# --- a real stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(services: ServiceManager, mlflow_server: Service) -> Iterator[dict[str, Any]]:
    """Redis, two exporters reading it, and a Prometheus scraping both every second."""
    redis_server = services.redis()
    exporters = []
    for _ in range(2):
        port = free_port()
        exporters.append(
            services.bigbertha(
                "exporter",
                ["exporter", "--host", "127.0.0.1", "--port", str(port)],
                port,
                env={"BIGBERTHA_REDIS__URL": str(redis_server.extra["url"])},
            )
        )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                # What the ServiceMonitor produces: job = the exporter Service, its namespace.
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{e.port}" for e in exporters],
                        "labels": {"namespace": NAMESPACE},
                    }
                ],
            }
        ],
    }
    prometheus = services.prometheus(yaml.safe_dump(config))
    yield {"redis": redis_server, "prometheus": prometheus, "mlflow": mlflow_server}


def canary_settings(stack: dict[str, Any], **canary_values: Any) -> Settings:
    """Settings of one test: its own registered model (so its own aliases and series)."""
    values = {
        "share": 0.2,
        **DEMO,
        "deadline_seconds": 60,
        "poll_seconds": 0.5,
        "prometheus_url": stack["prometheus"].url,
        "prometheus_selector": SELECTOR,
        **canary_values,
    }
    return load(
        overrides={
            "redis": {"url": stack["redis"].extra["url"], "timeout_seconds": 1.0},
            "mlflow": {
                "tracking_uri": stack["mlflow"].url,
                "model_name": f"canary-{uuid.uuid4().hex[:8]}",
            },
            "canary": values,
        }
    )


def register(settings: Settings, count: int, workflow: str = "wf-canary") -> list[str]:
    """`count` versions of the test's model (the canary never loads them)."""
    client = registry.client(settings)
    name = settings.mlflow.model_name
    client.create_registered_model(name)
    return [
        str(
            client.create_model_version(
                name, source=f"s3://artifacts/{name}/{n}", tags={"workflow_name": workflow}
            ).version
        )
        for n in range(count)
    ]


def rate(settings: Settings, version: str, up: int, down: int, people: int = 0) -> None:
    """Votes as the chatbot records them when users click thumbs up or down (by `people`
    distinct pseudonyms in turn; 0: without one)."""
    recorder = Recorder.from_settings(settings)
    recorder.set_serving_model(version)
    n = 0
    for rating, count in (("up", up), ("down", down)):
        for _ in range(count):
            person = f"person-{n % people}" if people else None
            recorder.record_feedback(version, rating, person=person)  # type: ignore[arg-type]
            n += 1
    assert recorder.dropped == 0


def wait_scraped(settings: Settings, expected: dict[tuple[str, str], int]) -> None:
    """Until Prometheus has every (version, rating) total in `expected`."""
    url, name = settings.canary.prometheus_url, settings.mlflow.model_name
    assert url
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        totals = votes.totals(url, name, SELECTOR)
        if all(totals.get(key) == count for key, count in expected.items()):
            return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never showed {expected}: {totals}")


def promotions(settings: Settings) -> dict[str, int]:
    """bigbertha_promotions_total by decision, as the recorder counted it in Redis."""
    assert settings.redis.url is not None
    return telemetry_counts(settings.redis.url.get_secret_value(), "bigbertha_promotions_total")


def canary_runs(settings: Settings, version: str) -> list[Any]:
    import mlflow

    registry.client(settings)
    found = mlflow.search_runs(
        experiment_names=[registry.EXPERIMENT],
        filter_string=f"tags.canary_for = '{version}' and tags.step = 'canary'",
        output_format="list",
    )
    return [r for r in found if r.data.params.get("min_votes")]


def aliases(settings: Settings) -> dict[str, str | None]:
    return {
        alias: registry.alias_version(settings, alias)
        for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)
    }


def canary_gauge(settings: Settings, version: str) -> list[Any]:
    url = settings.canary.prometheus_url
    assert url
    query = (
        f'bigbertha_canary_started_timestamp_seconds{{model="{settings.mlflow.model_name}",'
        f'model_version="{version}"}}'
    )
    return votes.instant_query(url, query)


def watch(settings: Settings, version: str) -> tuple[threading.Thread, dict[str, Any]]:
    """The canary step watching `version` in the background; its decision lands in the dict."""
    result: dict[str, Any] = {}
    watcher = threading.Thread(
        target=lambda: result.update(decision=canary.run(settings, version=version))
    )
    watcher.start()
    return watcher, result


LINEAGE = {
    "alert_name": "BigBerthaNegativeFeedbackHigh",
    "alert_labels": '{"alertname": "BigBerthaNegativeFeedbackHigh"}',
    "workflow_name": "wf-canary",
}


# --- the four outcomes ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_challenger_users_like_better_becomes_champion(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    settings = canary_settings(stack)
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    # The votes that started this retraining: the champion's history, not the canary's.
    rate(settings, champion, up=2, down=18)
    wait_scraped(settings, {(champion, "down"): 18})
    before = promotions(settings)

    started = canary.start(settings, challenger)
    assert aliases(settings)[registry.CHALLENGER] == challenger
    wait_for_gauge = time.monotonic() + 15
    while not canary_gauge(settings, challenger) and time.monotonic() < wait_for_gauge:
        time.sleep(0.25)
    assert float(canary_gauge(settings, challenger)[0]["value"][1]) == pytest.approx(started)

    rate(settings, challenger, up=7, down=2)
    # A user who clicked down, then up on the same answer: one up vote.
    recorder = Recorder.from_settings(settings)
    recorder.record_feedback(challenger, "down", "answer-1")
    recorder.record_feedback(challenger, "up", "answer-1")
    rate(settings, champion, up=4, down=6)  # 0.6 down since the canary started
    voted = time.time()
    wait_scraped(settings, {(challenger, "up"): 8, (champion, "down"): 24})
    report = tmp_path / "canary.json"
    decision = canary.run(settings, version=challenger, lineage=LINEAGE, report=str(report))

    assert decision.decision == "promoted", decision.reason
    assert decision.challenger == {"up": 8, "down": 2, "total": 10, "ratio": 0.2}
    assert decision.champion == {"up": 4, "down": 6, "total": 10, "ratio": 0.6}  # not 24 of 30
    assert decision.champion_versions == [champion]
    assert (decision.champion_before, decision.champion_after) == (champion, challenger)
    assert decision.seconds is not None and 0 < decision.seconds < 60
    # When the counts it decided on were scraped: after the votes (the exporter reads Redis a
    # moment after the scrape's timestamp), before the decision.
    assert decision.counted_through is not None
    oldest, newest = decision.counted_through
    assert voted - 1 <= oldest <= newest <= (decision.decided_at or 0)
    assert aliases(settings) == {"champion": challenger, "challenger": None, "previous": champion}
    tags = registry.version_tags(settings, challenger)
    assert tags["canary.decision"] == "promoted" and "0.20 (2 down of 10)" in tags["canary.reason"]
    recorded = json.loads(tags["canary.report"])
    assert recorded["challenger"]["down"] == 2 and recorded["design"]["planned_votes"] == 26
    assert recorded["counted_through"] == [oldest, newest]
    assert recorded["statistic"][-1]["log_lr_promote"] >= math.log(10)  # what decided
    (run,) = canary_runs(settings, challenger)
    assert run.data.tags["decision"] == "promoted"
    assert run.data.tags["alert_name"] == LINEAGE["alert_name"]
    assert run.data.tags["workflow_name"] == "wf-canary"
    assert run.data.metrics["challenger_ratio"] == pytest.approx(0.2)
    assert json.loads(report.read_text())["decision"] == "promoted"
    after = promotions(settings)
    assert after.get("promoted", 0) == before.get("promoted", 0) + 1
    deadline = time.monotonic() + 15
    while canary_gauge(settings, challenger) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not canary_gauge(settings, challenger), "the stuck-canary gauge outlived the canary"

    # A step retried after it already decided finishes the same decision, counted once.
    again = canary.run(settings, version=challenger, lineage=LINEAGE)
    assert again.decision == "promoted" and again.challenger["down"] == 2
    assert promotions(settings).get("promoted", 0) == after.get("promoted", 0)
    assert len(canary_runs(settings, challenger)) == 1


@pytest.mark.slow
def test_a_challenger_users_like_less_is_retired(stack: dict[str, Any]) -> None:
    settings = canary_settings(stack)
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    before = promotions(settings)
    canary.start(settings, challenger)
    rate(settings, challenger, up=2, down=8)
    rate(settings, champion, up=8, down=2)
    decision = canary.run(settings, version=challenger, lineage=LINEAGE)
    assert decision.decision == "retired"
    assert decision.reason.startswith(
        "down-vote ratio challenger 0.80 (8 down of 10) vs champion 0.20 (2 down of 10), "
        "information 27 of 58 planned: not better by 0.25, at level 0.1"
    )
    assert decision.statistic[-1]["log_lr_retire"] >= math.log(10)
    assert aliases(settings) == {"champion": champion, "challenger": None, "previous": None}
    tags = registry.version_tags(settings, challenger)
    assert tags["canary.decision"] == "retired" and "not better by" in tags["canary.reason"]
    assert promotions(settings).get("retired", 0) == before.get("retired", 0) + 1


@pytest.mark.slow
def test_a_few_peoples_many_votes_never_promote(stack: dict[str, Any]) -> None:
    """The votes a promotion needs, cast by 2 people where canary.min_voters is 3: the test
    would promote, the canary waits for a third person, and past the deadline retires."""

    def canary_of(people: int, **values: Any) -> tuple[str, Any]:
        """Votes a promotion needs on the challenger, cast by `people` people."""
        settings = canary_settings(stack, min_voters=3, **values)
        champion, challenger = register(settings, 2)
        registry.promote(settings, champion)
        canary.start(settings, challenger)
        rate(settings, challenger, up=9, down=1, people=people)
        rate(settings, champion, up=2, down=8, people=9)
        decision = canary.run(settings, version=challenger)
        assert aliases(settings)["champion"] == (champion if people < 3 else challenger)
        return champion, decision

    _, decision = canary_of(2, deadline_seconds=6)
    assert decision.decision == "retired"
    assert decision.reason.endswith("but 2 people voted on it, 3 needed (canary.min_voters)")
    # A third person, and the same evidence promotes.
    _, decision = canary_of(3)
    assert decision.decision == "promoted" and decision.reason.endswith("3 people voted on it")


@pytest.mark.slow
def test_not_enough_votes_by_the_deadline_retires_the_challenger(stack: dict[str, Any]) -> None:
    settings = canary_settings(stack, deadline_seconds=4)
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    canary.start(settings, challenger)
    rate(settings, challenger, up=3, down=0)  # users like it, but three votes prove nothing
    rate(settings, champion, up=0, down=20)
    decision = canary.run(settings, version=challenger)
    assert decision.decision == "retired"
    assert decision.reason == (
        "not enough votes by the deadline (4s): challenger 3, champion 20 votes, and the "
        "sequential test had not decided"
    )
    assert decision.polls == len(decision.statistic) > 1
    assert decision.seconds is not None and 4 <= decision.seconds < 15
    assert aliases(settings)["champion"] == champion and aliases(settings)["challenger"] is None


@pytest.mark.slow
def test_the_deadline_outcome_is_configurable_and_anchored_at_the_start(
    stack: dict[str, Any],
) -> None:
    settings = canary_settings(stack, deadline_seconds=30, on_deadline="promote")
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    # The canary started 40 s ago (a step that was retried, say): it is past its deadline now,
    # whenever this step happens to run.
    canary.start(settings, challenger, now=time.time() - 40)
    began = time.monotonic()
    decision = canary.run(settings, version=challenger)
    assert time.monotonic() - began < 10
    assert decision.decision == "promoted"
    assert decision.reason.endswith("canary.on_deadline is promote")
    assert decision.seconds is not None and decision.seconds >= 40
    assert aliases(settings) == {"champion": challenger, "challenger": None, "previous": champion}


@pytest.mark.slow
def test_the_canary_waits_for_votes_that_arrive_while_it_polls(stack: dict[str, Any]) -> None:
    settings = canary_settings(stack)
    (challenger,) = register(settings, 1)  # no champion yet: the base model is the other side
    canary.start(settings, challenger)
    watcher, result = watch(settings, challenger)
    time.sleep(2)
    assert watcher.is_alive(), "decided before any vote"
    rate(settings, "smollm2", up=4, down=6)
    rate(settings, challenger, up=8, down=2)
    watcher.join(30)
    decision = result["decision"]
    assert decision.decision == "promoted" and decision.champion_versions == ["smollm2"]
    assert decision.polls > 2 and decision.seconds is not None and decision.seconds < 30
    assert aliases(settings)["champion"] == challenger


# --- failures and interruptions ---------------------------------------------------------------


@pytest.mark.slow
def test_an_unreachable_prometheus_is_polled_through_then_fails_the_step(
    stack: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = canary_settings(stack, prometheus_url=dead, deadline_seconds=2)
    (challenger,) = register(settings, 1)
    canary.start(settings, challenger)
    with (
        caplog.at_level("WARNING", logger="bigbertha.training.canary"),
        pytest.raises(ServiceUnavailable, match="Prometheus at .* is unreachable"),
    ):
        canary.run(settings, version=challenger)
    assert "polling on" in caplog.text  # it kept polling until the deadline
    assert aliases(settings)["challenger"] == challenger  # undecided: the retry decides

    bad = settings.model_copy(
        update={"canary": settings.canary.model_copy(update={"prometheus_url": None})}
    )
    with pytest.raises(ConfigError, match="canary.prometheus_url is not set"):
        canary.run(bad, version=challenger)


@pytest.mark.slow
def test_a_challenger_retired_or_replaced_meanwhile_ends_the_watch(stack: dict[str, Any]) -> None:
    settings = canary_settings(stack)
    champion, first, second = register(settings, 3)
    registry.promote(settings, champion)
    canary.start(settings, first)
    watcher, result = watch(settings, first)
    time.sleep(1.5)
    # A newer challenger passes the gate: the first one is retired as superseded.
    canary.start(settings, second)
    watcher.join(15)
    assert result["decision"].decision == "withdrawn"
    assert "now version " + second in result["decision"].reason
    tags = registry.version_tags(settings, first)
    assert tags["canary.decision"] == "retired"
    assert tags["canary.reason"] == f"superseded by version {second}"
    assert aliases(settings)["challenger"] == second

    # The gate run again on the same challenger keeps its clock.
    started = float(registry.version_tags(settings, second)[canary.STARTED_TAG])
    assert canary.start(settings, second) == started

    # By hand: retired at once; nothing left to retire afterwards.
    runner = CliRunner()
    env = {
        "BIGBERTHA_MLFLOW__TRACKING_URI": settings.mlflow.tracking_uri,
        "BIGBERTHA_MLFLOW__MODEL_NAME": settings.mlflow.model_name,
        "BIGBERTHA_REDIS__URL": str(stack["redis"].extra["url"]),
    }
    done = runner.invoke(app, ["canary", "--retire", "--reason", "bad answers in review"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["decision"] == "retired"
    assert registry.version_tags(settings, second)["canary.reason"] == "bad answers in review"
    again = runner.invoke(app, ["canary", "--retire"], env=env)
    assert again.exit_code == 2
    assert "no challenger to retire" in again.stderr
    idle = runner.invoke(app, ["canary"], env=env)
    assert idle.exit_code == 0 and json.loads(idle.stdout)["decision"] == "skipped"


@pytest.mark.slow
def test_a_canary_whose_alias_was_removed_by_hand_can_still_be_closed(
    stack: dict[str, Any],
) -> None:
    import redis

    from bigbertha.telemetry.recorder import CANARY_KEY

    settings = canary_settings(stack)
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    canary.start(settings, challenger)
    mirror = redis.Redis.from_url(str(stack["redis"].extra["url"]), decode_responses=True)
    assert any(json.loads(k)[0] == settings.mlflow.model_name for k in mirror.hkeys(CANARY_KEY))
    registry.client(settings).delete_registered_model_alias(
        settings.mlflow.model_name, "challenger"
    )

    decision = canary.retire(settings, challenger, "alias removed in the MLflow UI")
    assert decision.decision == "retired" and decision.champion_after == champion
    assert not any(
        json.loads(k)[0] == settings.mlflow.model_name for k in mirror.hkeys(CANARY_KEY)
    ), "the stuck-canary mirror outlived the canary"
    with pytest.raises(ConfigError, match="nothing to retire"):
        canary.retire(settings, challenger, "twice")  # decided already
    with pytest.raises(ConfigError, match="nothing to retire"):
        canary.retire(settings, champion, "never a challenger")


@pytest.mark.slow
def test_a_failed_workflow_retires_the_canary_it_started(stack: dict[str, Any]) -> None:
    settings = canary_settings(stack)
    champion, mine, theirs = register(settings, 3)
    registry.client(settings).set_model_version_tag(
        settings.mlflow.model_name, theirs, "workflow_name", "wf-other"
    )
    registry.promote(settings, champion)
    canary.start(settings, theirs)
    failures = '[{"displayName":"canary","message":"pod deleted"}]'
    # Another run's canary is left alone...
    retrain.record_exit(settings, "Failed", failures, {"workflow_name": "wf-canary"})
    assert aliases(settings)["challenger"] == theirs
    # ...this run's is retired: no decision step will ever run for it.
    canary.start(settings, mine)
    retrain.record_exit(settings, "Failed", failures, {"workflow_name": "wf-canary"})
    assert aliases(settings) == {"champion": champion, "challenger": None, "previous": None}
    reason = registry.version_tags(settings, mine)["canary.reason"]
    assert reason == "workflow Failed: canary: pod deleted"


def test_the_cli_skips_a_gate_that_started_no_canary(tmp_path: Path, clean_env: Path) -> None:
    report = tmp_path / "promotion.json"
    report.write_text(json.dumps({"decision": "rejected", "version": "4"}))
    result = CliRunner().invoke(app, ["canary", "--promotion", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reason"] == "the gate started no canary"
    report.write_text("[]")
    broken = CliRunner().invoke(app, ["canary", "--promotion", str(report)])
    assert broken.exit_code == 2 and "not a promote report" in broken.stderr


def test_the_cli_exits_69_within_seconds_when_mlflow_refuses(clean_env: Path) -> None:
    """MLflow's client would retry for about 250 s; the canary bounds it like promote."""
    env = {
        "BIGBERTHA_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "BIGBERTHA_CANARY__PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",
    }
    began = time.monotonic()
    result = CliRunner().invoke(app, ["canary"], env=env)
    assert result.exit_code == 69, result.output
    assert time.monotonic() - began < 15
    assert "MLflow" in result.stderr


@pytest.mark.slow
def test_a_prometheus_restarted_mid_canary_still_counts_since_the_start(
    stack: dict[str, Any], services: ServiceManager
) -> None:
    """The canary's own Prometheus (same scrape config, same data directory) stops and starts
    again while the canary polls: it decides on exactly the votes cast since its start, not on
    the champion's history, with the baseline `start` recorded on the version."""
    import subprocess

    from tests.services import require_binary

    config = yaml.safe_load((Path(stack["prometheus"].workdir) / "prometheus.yml").read_text())
    own = services.prometheus(yaml.safe_dump(config))
    settings = canary_settings(stack, prometheus_url=own.url, poll_seconds=0.5)
    champion, challenger = register(settings, 2)
    registry.promote(settings, champion)
    rate(settings, champion, up=2, down=18)  # the history that started the retraining
    canary.start(settings, challenger)
    assert canary.BASELINE_TAG in registry.version_tags(settings, challenger)
    rate(settings, challenger, up=4, down=1)
    rate(settings, champion, up=2, down=2)  # not enough to decide yet
    watcher, result = watch(settings, challenger)
    time.sleep(1.5)
    assert watcher.is_alive()

    own.stop()
    require_binary("prometheus")
    again = subprocess.Popen(
        own.process.args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        own.process = again
        own.wait_ready()
        rate(settings, challenger, up=4, down=1)
        rate(settings, champion, up=2, down=4)
        watcher.join(30)
        decision = result["decision"]
        assert decision.decision == "promoted", decision.reason
        assert decision.challenger == {"up": 8, "down": 2, "total": 10, "ratio": 0.2}
        assert decision.champion == {"up": 4, "down": 6, "total": 10, "ratio": 0.6}
    finally:
        own.stop()
