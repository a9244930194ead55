"""The local event gateway agrees with the chart's Sensors and WorkflowTemplates.

The gateway interprets the objects the chart renders; these tests feed it the real-shaped
payloads from ../shared/samples and check the Workflows it would submit and run: the same
filters (firing + retrain only), the same parameters (raw keys, alert name and labels), the
same cooldown and one-at-a-time rule.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from pathlib import Path

import pytest

from bigbertha.local import chart, gateway

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-token"


@pytest.fixture(scope="module")
def manifests():
    return chart.render([ROOT / "values" / "local.yaml"])


def _sample(shared_dir: Path, name: str) -> dict:
    return json.loads((shared_dir / "samples" / name).read_text())


def step_of(argv: list[str]) -> str:
    """The DAG step an argv is: `retrain --check` is check, `--record-exit` the exit handler."""
    if argv[1] == "retrain" and "--check" in argv:
        return "check"
    if argv[1] == "retrain" and "--record-exit" in argv:
        return "record-exit"
    return argv[1]


class Recorder:
    """A step runner that records argv and answers with scripted exit codes; the check step
    writes its scripted decision ("train" unless told) where --decision-file says."""

    def __init__(
        self,
        codes: dict[str, list[int]] | None = None,
        delay: float = 0.0,
        decisions: list[str] | None = None,
    ) -> None:
        self.calls: list[list[str]] = []
        self.codes = codes or {}
        self.decisions = decisions or []
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    @property
    def steps(self) -> list[str]:
        return [step_of(argv) for argv in self.calls]

    def __call__(self, argv: list[str]) -> int:
        with self._lock:
            self.calls.append(argv)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        with self._lock:
            self.active -= 1
            if step_of(argv) == "check":
                decision = self.decisions.pop(0) if self.decisions else "train"
                Path(argv[argv.index("--decision-file") + 1]).write_text(decision)
        queue = self.codes.get(step_of(argv), [])
        return queue.pop(0) if queue else 0


def _gateway(manifests, runner) -> gateway.Gateway:
    return gateway.Gateway(manifests, runner, TOKEN)


def _alert_endpoint(gw: gateway.Gateway) -> str:
    (endpoint,) = gw.webhooks
    return endpoint


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_firing_retrain_alert_starts_one_workflow_with_its_name_and_labels(manifests, shared_dir):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    (run,) = gw.alertmanager(_alert_endpoint(gw), body, AUTH)
    assert gw.wait(30)
    assert run.arguments["alert-name"] == "BigBerthaNegativeFeedbackHigh"
    labels = json.loads(run.arguments["alert-labels"])
    assert labels["bigbertha_action"] == "retrain" and labels["model_version"] == "v14"
    # The DAG ran in order, each step a `bigbertha` subcommand with the alert passed on.
    assert runner.steps == [
        "check",
        "prepare-data",
        "finetune",
        "evaluate",
        "promote",
        "record-exit",
    ]
    check = runner.calls[0]
    assert check[check.index("--alert-episode") + 1] == run.arguments["alert-episode"]
    assert run.name == f"bigbertha-retrain-{run.arguments['alert-episode']}"
    finetune = runner.calls[2]
    assert finetune[0] == "bigbertha"
    assert finetune[finetune.index("--alert-name") + 1] == "BigBerthaNegativeFeedbackHigh"
    assert any(a.startswith("s3://") and run.name in a for a in finetune)
    assert run.status == "Succeeded"
    # The exit handler ran last, with the workflow's status.
    assert "Succeeded" in runner.calls[-1]


def test_a_malformed_alert_is_refused_and_the_good_one_in_the_same_post_proceeds(
    manifests, shared_dir
):
    """Issue 25 item 4: one alert with `labels` a string made the whole post a 500."""
    runner = Recorder()
    gw = _gateway(manifests, runner)
    client = gw.flask_app().test_client()
    endpoint = _alert_endpoint(gw)
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    body["alerts"][:0] = [{"status": "firing", "labels": "oops"}, "text", {"labels": {"a": 1}}]
    reply = client.post(endpoint, json=body, headers=AUTH)
    assert reply.status_code == 200, reply.get_data()
    doc = reply.get_json()
    assert doc["refused"] == [
        "alerts[0]: labels: must be an object of strings, not str",
        "alerts[1]: must be an object, not str",
        "alerts[2]: labels: values must be strings (a)",
    ]
    (name,) = doc["workflows"]
    assert gw.wait(30) and runner.steps[0] == "check"
    only_bad = {**body, "alerts": body["alerts"][:3]}
    reply = client.post(endpoint, json=only_bad, headers=AUTH)
    assert reply.status_code == 400 and "alerts[0]: labels" in reply.get_json()["error"]
    not_a_list = client.post(endpoint, json={**body, "alerts": "x"}, headers=AUTH)
    assert not_a_list.status_code == 400
    assert not_a_list.get_json()["error"].endswith("alerts: must be a list, not str")


def test_alerts_without_fingerprint_or_starts_at_get_episodes_from_their_labels(
    manifests, shared_dir
):
    gw = _gateway(manifests, Recorder())
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    for alert in body["alerts"]:
        del alert["fingerprint"], alert["startsAt"]
    other = copy.deepcopy(body)
    other["alerts"][0]["labels"]["model_version"] = "v15"
    (first,) = gw.alertmanager(_alert_endpoint(gw), body, AUTH)
    assert gw.alertmanager(_alert_endpoint(gw), copy.deepcopy(body), AUTH) == []  # a repeat
    (second,) = gw.alertmanager(_alert_endpoint(gw), other, AUTH)
    assert first.name != second.name
    assert gw.wait(30)


def test_the_sensor_sees_argo_event_data_shape(manifests, shared_dir):
    # Argo's webhook event data for the same POST is what the Sensor filters see.
    argo_data = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    (trigger,) = [t for t in gateway.triggers_from(manifests) if "retrain" in t.sensor]
    assert trigger.matches(trigger.event_source, trigger.event_name, argo_data)
    workflow = trigger.workflow(argo_data)
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params["alert-name"] == "BigBerthaNegativeFeedbackHigh"


def test_resolved_and_page_only_alerts_start_nothing(manifests, shared_dir):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    endpoint = _alert_endpoint(gw)
    resolved = _sample(shared_dir, "alertmanager-webhook-resolved.json")
    assert gw.alertmanager(endpoint, resolved, AUTH) == []
    page_only = _sample(shared_dir, "alertmanager-webhook-firing.json")
    page_only["alerts"] = [
        a for a in page_only["alerts"] if a["labels"]["bigbertha_action"] == "page"
    ]
    assert page_only["status"] == "firing"  # the group fires: only a per-alert filter helps
    assert gw.alertmanager(endpoint, page_only, AUTH) == []
    # A retrain alert that is itself resolved inside a firing group starts nothing either.
    mixed = _sample(shared_dir, "alertmanager-webhook-firing.json")
    mixed["alerts"][0]["status"] = "resolved"
    assert gw.alertmanager(endpoint, mixed, AUTH) == []
    assert runner.calls == []


def test_webhook_requires_the_bearer_token(manifests, shared_dir):
    gw = _gateway(manifests, Recorder())
    client = gw.flask_app().test_client()
    body = _sample(shared_dir, "alertmanager-webhook-resolved.json")
    endpoint = _alert_endpoint(gw)
    assert client.post(endpoint, json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post(endpoint, json=body, headers=bad).status_code == 401
    ok = client.post(endpoint, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.get_json() == {"workflows": []}


def test_one_alert_episode_is_one_workflow_name(manifests, shared_dir):
    """Repeats of one firing episode (same fingerprint and startsAt) map to one name; a new
    episode (a new startsAt after it resolved and fired again) to another."""
    from bigbertha.training import cooldown

    gw = _gateway(manifests, Recorder())
    (trigger,) = [t for t in gw.triggers if "retrain" in t.sensor]
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    first = trigger.workflow(gateway.webhook_event(body, AUTH))
    repeat = copy.deepcopy(body)
    repeat["notification_reason"] = "repeat_interval"  # what changes between repeats
    repeat["alerts"][1]["status"] = "resolved"  # other alerts of the group come and go
    again = trigger.workflow(gateway.webhook_event(repeat, AUTH))
    assert first["metadata"]["name"] == again["metadata"]["name"]
    retrain_alert = body["alerts"][0]
    episode = cooldown.episode_id(retrain_alert["fingerprint"], retrain_alert["startsAt"])
    assert first["metadata"]["name"] == f"bigbertha-retrain-{episode}"  # the Python twin agrees
    refired = copy.deepcopy(body)
    refired["alerts"][0]["startsAt"] = "2026-08-24T11:02:13.407Z"
    new = trigger.workflow(gateway.webhook_event(refired, AUTH))
    assert new["metadata"]["name"] != first["metadata"]["name"]
    assert gw.engine.submit(first) is not None and gw.engine.submit(again) is None


def test_a_storm_across_a_minute_boundary_starts_one_workflow(manifests, shared_dir, monkeypatch):
    """20 identical firing posts over 59.5 s .. 60.5 s of an injected clock: one Workflow."""
    clock = iter(60 * 1_000_000 - 0.5 + i * 0.05 for i in range(10_000))

    class Clock:
        """The gateway's `time`, its wall clock stepping across a minute boundary."""

        monotonic = staticmethod(time.monotonic)
        sleep = staticmethod(time.sleep)

        @staticmethod
        def time() -> float:
            return next(clock)

    monkeypatch.setattr(gateway, "time", Clock)
    runner = Recorder()
    gw = _gateway(manifests, runner)
    client = gw.flask_app().test_client()
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    started = []
    for _ in range(20):
        response = client.post(_alert_endpoint(gw), json=body, headers=AUTH)
        assert response.status_code == 200
        started += response.get_json()["workflows"]
    assert gw.wait(30)
    assert len(started) == 1 and len(gw.engine.runs) == 1
    assert runner.steps.count("check") == 1 and runner.steps.count("finetune") == 1


def test_repeats_over_ten_minutes_then_a_new_episode_after_the_cooldown(manifests, shared_dir):
    """Repeats of one episode over 10 minutes start one Workflow; the episode after it (the
    alert resolved and fired again) is a new Workflow, whose check step decides (here: train)."""
    runner = Recorder(decisions=["train", "train"])
    gw = _gateway(manifests, runner)
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    names = []
    for minute in range(0, 11):  # Alertmanager re-sends the group; startsAt stays
        repeat = copy.deepcopy(body)
        repeat["notification_reason"] = f"repeat after {minute} min"
        names += [r.name for r in gw.alertmanager(_alert_endpoint(gw), repeat, AUTH)]
    assert len(names) == 1
    refired = copy.deepcopy(body)
    refired["alerts"][0]["startsAt"] = "2026-08-24T09:47:13.407Z"  # an hour later
    names += [r.name for r in gw.alertmanager(_alert_endpoint(gw), refired, AUTH)]
    assert gw.wait(30)
    assert len(set(names)) == 2 and runner.steps.count("finetune") == 2


def test_a_skipped_check_ends_the_workflow_untrained_and_succeeded(manifests, shared_dir):
    runner = Recorder(decisions=["skip"])
    gw = _gateway(manifests, runner)
    (run,) = gw.alertmanager(
        _alert_endpoint(gw), _sample(shared_dir, "alertmanager-webhook-firing.json"), AUTH
    )
    assert gw.wait(30)
    assert runner.steps == ["check", "record-exit"]
    assert run.status == "Succeeded" and "Succeeded" in runner.calls[-1]
    assert run.phases == {
        "check": "Succeeded",
        "prepare-data": "Skipped",  # its `when` is false
        "finetune": "Omitted",  # it needs prepare-data.Succeeded
        "evaluate": "Omitted",
        "promote": "Omitted",
    }


def test_mutex_runs_one_retraining_at_a_time(manifests, shared_dir):
    runner = Recorder(delay=0.05)
    gw = _gateway(manifests, runner)
    (trigger,) = [t for t in gw.triggers if "retrain" in t.sensor]
    data = gateway.webhook_event(_sample(shared_dir, "alertmanager-webhook-firing.json"), AUTH)
    runs = []
    for starts_at in ("2026-08-24T08:47:13.407Z", "2026-08-24T10:47:13.407Z"):  # two episodes
        data["body"]["alerts"][0]["startsAt"] = starts_at
        runs.append(gw.engine.submit(trigger.workflow(data)))
    threads = [threading.Thread(target=gw.engine.execute, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r.status == "Succeeded" for r in runs)
    assert runner.max_active == 1
    first, second = sorted(runs, key=lambda r: r.started)
    assert second.started >= first.finished - 0.01


def test_a_failed_step_stops_the_dag_and_the_exit_handler_sees_it(manifests, shared_dir):
    # finetune fails with a data error (exit 2, not retried); evaluate/promote never run.
    runner = Recorder(codes={"finetune": [2]})
    gw = _gateway(manifests, runner)
    (run,) = gw.alertmanager(
        _alert_endpoint(gw), _sample(shared_dir, "alertmanager-webhook-firing.json"), AUTH
    )
    assert gw.wait(30)
    assert runner.steps == ["check", "prepare-data", "finetune", "record-exit"]
    assert run.status == "Failed" and "finetune" in run.message
    assert "Failed" in runner.calls[-1]


@pytest.mark.parametrize(
    ("code", "status", "attempts"),
    [(69, "Succeeded", 2), *((code, "Failed", 1) for code in (1, 2, 3, 70, 75))],
)
def test_only_the_transient_exit_code_is_retried(manifests, shared_dir, code, status, attempts):
    runner = Recorder(codes={"evaluate": [code, 0]})
    gw = _gateway(manifests, runner)
    (run,) = gw.alertmanager(
        _alert_endpoint(gw), _sample(shared_dir, "alertmanager-webhook-firing.json"), AUTH
    )
    assert gw.wait(30)
    assert run.status == status
    assert [s["attempts"] for s in run.steps if s["name"] == "evaluate"] == [attempts]


@pytest.mark.parametrize(
    ("sample", "event_name"),
    [
        ("minio-notification-put-webhook-target.json", "s3:ObjectCreated:Put"),
    ],
)
def test_minio_notification_ingests_the_raw_key(manifests, shared_dir, sample, event_name):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    notification = _sample(shared_dir, sample)
    bucket = manifests_bucket(manifests)
    notification["Records"][0]["s3"]["bucket"]["name"] = bucket
    (run,) = gw.object_store(notification)
    assert gw.wait(30)
    raw_key = notification["Key"].split("/", 1)[1]  # top-level Key is bucket/key, unescaped
    assert run.arguments == {"bucket": bucket, "key": raw_key, "event-name": event_name}
    argv = runner.calls[0]
    assert argv[:2] == ["bigbertha", "ingest"]
    assert f"s3://{bucket}/{raw_key}" in argv and event_name in argv


def test_argo_minio_event_data_maps_like_the_sensor(manifests, shared_dir):
    (trigger,) = [t for t in gateway.triggers_from(manifests) if "ingest" in t.sensor]
    data = _sample(shared_dir, "argo-minio-eventdata-put.json")
    workflow = trigger.workflow(data)
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params == {
        "bucket": "datasets",
        "key": "docs/handbook 2026-08 café.pdf",
        "event-name": "s3:ObjectCreated:Put",
    }


def test_delete_and_other_buckets(manifests, shared_dir):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    bucket = manifests_bucket(manifests)
    delete = copy.deepcopy(_sample(shared_dir, "minio-notification-delete.json"))
    delete["Records"][0]["s3"]["bucket"]["name"] = bucket
    (run,) = gw.object_store(delete)
    assert run.arguments["event-name"] == "s3:ObjectRemoved:Delete"
    # A listen-API line carries the key raw: a literal "+" in it must survive.
    plus = copy.deepcopy(delete)
    plus["Records"][0]["s3"]["object"]["key"] = "docs/c++ notes.md"
    (run_plus,) = gw.object_store(plus)
    assert run_plus.arguments["key"] == "docs/c++ notes.md"
    other = copy.deepcopy(delete)
    other["Records"][0]["s3"]["bucket"]["name"] = "not-watched"
    assert gw.object_store(other) == []
    assert gw.wait(30)


def manifests_bucket(manifests) -> str:
    (source,) = [m for m in manifests if m["kind"] == "EventSource" and "minio" in m["spec"]]
    (spec,) = source["spec"]["minio"].values()
    return spec["bucket"]["name"]


def test_ingestion_semaphore_bounds_concurrent_workflows(manifests, shared_dir):
    # values/local.yaml sets workflows.ingest.parallelism: 1, read from the rendered ConfigMap.
    runner = Recorder(delay=0.05)
    gw = _gateway(manifests, runner)
    bucket = manifests_bucket(manifests)
    for i in range(4):
        note = copy.deepcopy(_sample(shared_dir, "minio-notification-put-webhook-target.json"))
        note["Records"][0]["s3"]["bucket"]["name"] = bucket
        note["Records"][0]["s3"]["object"]["key"] = f"docs%2Fdoc-{i}.md"
        note["Key"] = f"{bucket}/docs/doc-{i}.md"
        gw.object_store(note)
    assert gw.wait(30)
    assert len(runner.calls) == 4 and runner.max_active == 1


@pytest.mark.parametrize(
    ("expression", "status", "code", "expected"),
    [
        (None, "Failed", 2, True),  # retryPolicy Always without an expression
        ('lastRetry.status == "Error" || lastRetry.exitCode == "69"', "Failed", 69, True),
        ('lastRetry.status == "Error" || lastRetry.exitCode == "69"', "Failed", 70, False),
        ('lastRetry.status == "Error" || lastRetry.exitCode == "69"', "Error", 137, True),
        ('!(lastRetry.exitCode == "3") && lastRetry.status != "Error"', "Failed", 3, False),
        ('!(lastRetry.exitCode == "3") && lastRetry.status != "Error"', "Failed", 4, True),
    ],
)
def test_retry_expressions_are_evaluated_as_argo_would(expression, status, code, expected):
    assert gateway.retry_wanted(expression, status, code) is expected


def test_an_expression_the_gateway_cannot_evaluate_is_refused():
    with pytest.raises(ValueError, match="unsupported"):
        gateway.retry_wanted("asInt(lastRetry.exitCode) > 1", "Failed", 2)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe", "not valid UTF-8 (byte 0xff at offset 0)"),
        (b'{"alerts": [{"labels": {"alertname": "\\ud800"}}]}', "contains an unpaired surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested 100000 deep; at most 32"),
        (b"[1,2]", "must be a JSON object, not list"),
        (b"null", "must be a JSON object, not NoneType"),
        (b"{not json", "not valid JSON"),
    ],
    ids=["not UTF-8", "lone surrogate", "nested", "array", "null", "not JSON"],
)
def test_malformed_bodies_are_400_with_the_reason(manifests, body, error):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    client = gw.flask_app().test_client()
    for path, what in ((_alert_endpoint(gw), "alertmanager webhook body"), ("/minio", None)):
        response = client.post(path, data=body, headers=AUTH)
        assert response.status_code == 400, (path, response.data[:200])
        message = response.get_json()["error"]
        assert message.startswith(f"{what or 'minio notification'}: {error}")
        assert "\n" not in message
    assert runner.calls == []


def test_minio_notifications_without_a_record_are_400(manifests):
    client = _gateway(manifests, Recorder()).flask_app().test_client()
    for body in ({}, {"Records": []}, {"Records": [{"s3": {}}]}, {"Records": [7]}):
        response = client.post("/minio", json=body, headers=AUTH)
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("minio notification: ")


def test_unauthenticated_posts_are_refused_before_the_body_is_read(manifests):
    gw = _gateway(manifests, Recorder())
    client = gw.flask_app().test_client()
    for path in (_alert_endpoint(gw), "/minio"):  # /minio: issue 25 item 4 (was open)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.post(path, data=b"[" * 100_000, headers=headers)
            assert response.status_code == 401 and response.get_json() == {"error": "unauthorized"}


def test_waitress_refuses_an_oversized_body_with_413(manifests):
    import socket

    from waitress.server import create_server

    from tests.services import free_port

    gw = _gateway(manifests, Recorder())
    port = free_port()
    server = create_server(
        gw.flask_app(), host="127.0.0.1", port=port, threads=2, **gateway.SERVER_LIMITS
    )
    # Announce a body one byte over the limit: refused before it is sent.
    head = (
        f"POST {_alert_endpoint(gw)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {gateway.MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode() + b"{")
            sock.setblocking(False)
            deadline = time.monotonic() + 10
            # The server's loop runs here, in this thread: closing it below cannot race it.
            while not reply and time.monotonic() < deadline:
                server.asyncore.loop(timeout=0.05, map=server._map, count=1)
                with contextlib.suppress(BlockingIOError):
                    reply = sock.recv(4096)
    finally:
        server.close()
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_storm_repeats_and_new_episodes_with_the_real_check_step(
    manifests, shared_dir, mlflow_server, redis_server, monkeypatch, clean_env
):
    """The gateway with the chart's DAG, whose check and exit steps run the real CLI against a
    real MLflow and Redis (the training steps are stand-ins), on an injected clock: a storm
    across a minute boundary and 10 minutes of repeats start one run; a new episode inside the
    cooldown is a Workflow that skips; one after the cooldown trains."""
    import uuid

    from typer.testing import CliRunner

    from bigbertha.cli import app
    from bigbertha.training import cooldown
    from tests.training.helpers import retrain_counts

    for key, value in {
        "MLFLOW__TRACKING_URI": mlflow_server.url,
        "MLFLOW__MODEL_NAME": f"storm-{uuid.uuid4().hex[:8]}",
        "REDIS__URL": redis_server.extra["url"],
        "RETRAIN__COOLDOWN_SECONDS": "3600",
    }.items():
        monkeypatch.setenv(f"BIGBERTHA_{key}", value)
    now = [60 * 29_833_333 - 1.0]  # one second before a minute boundary

    class Clock:
        """The check's clock (cooldown.time): the test's `now`."""

        strftime = staticmethod(time.strftime)
        gmtime = staticmethod(time.gmtime)

        @staticmethod
        def time() -> float:
            return now[0]

    monkeypatch.setattr(cooldown, "time", Clock)
    steps: list[str] = []

    def runner(argv: list[str]) -> int:
        steps.append(step_of(argv))
        if step_of(argv) in ("check", "record-exit"):
            result = CliRunner().invoke(app, argv[1:])
            assert result.exit_code == 0, result.output
            return result.exit_code
        return 0  # prepare-data, finetune, evaluate, promote: stand-ins

    gw = _gateway(manifests, runner)
    client = gw.flask_app().test_client()
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    before = retrain_counts(redis_server.extra["url"])

    def post(payload: dict) -> list[str]:
        response = client.post(_alert_endpoint(gw), json=payload, headers=AUTH)
        assert response.status_code == 200
        assert gw.wait(60)
        return response.get_json()["workflows"]

    start = now[0]
    started = []
    for i in range(20):  # the storm: 20 posts over 2 s, across the minute boundary
        now[0] = start + i * 0.1
        started += post(body)
    for minute in range(1, 11):  # Alertmanager's repeats of the same episode
        now[0] = start + 60 * minute
        started += post(body | {"notification_reason": "repeat_interval"})
    assert len(started) == 1 and steps.count("finetune") == 1

    now[0] = start + 1800  # resolved, then fired again: a new episode inside the cooldown
    refired = copy.deepcopy(body)
    refired["alerts"][0]["startsAt"] = "2026-08-24T09:17:13.407Z"
    (skipped,) = post(refired)
    assert steps.count("finetune") == 1  # the Workflow ran its check and ended there
    assert gw.engine.runs[-1].status == "Succeeded"
    assert gw.engine.runs[-1].phases["prepare-data"] == "Skipped"

    now[0] = start + 3600 + 1  # a genuinely new episode after the cooldown
    late = copy.deepcopy(body)
    late["alerts"][0]["startsAt"] = "2026-08-24T10:48:00.000Z"
    (trained,) = post(late)
    assert steps.count("finetune") == 2
    assert len({started[0], skipped, trained}) == 3
    after = retrain_counts(redis_server.extra["url"])
    assert after.get("skipped", 0) - before.get("skipped", 0) == 1
    assert after.get("succeeded", 0) - before.get("succeeded", 0) == 2


@pytest.mark.parametrize(
    ("depends", "phases", "expected"),
    [
        ("a", {"a": "Succeeded"}, True),
        ("a", {"a": "Skipped"}, True),  # a bare name: Succeeded, Skipped or Daemoned
        ("a", {"a": "Failed"}, False),
        ("a.Succeeded", {"a": "Skipped"}, False),
        ("a.Succeeded && b.Succeeded", {"a": "Succeeded", "b": "Omitted"}, False),
        ("a.Failed || b", {"a": "Succeeded", "b": "Succeeded"}, True),
        ("!(a.Failed) && b-c.Skipped", {"a": "Succeeded", "b-c": "Skipped"}, True),
    ],
)
def test_depends_expressions_are_evaluated_as_argo_would(depends, phases, expected):
    assert gateway.depends_satisfied({"depends": depends}, phases) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [("train == train", True), ("skip == train", False), ("'a b' != 'a b'", False)],
)
def test_when_conditions(condition, expected):
    assert gateway.when_true(condition) is expected


def test_a_when_the_gateway_cannot_evaluate_is_refused():
    with pytest.raises(ValueError, match="evaluates only"):
        gateway.when_true("{{x}} > 3 && y")


class BackfillSteps:
    """The backfill's steps, scripted: plan writes `batches` batches, each batch its summary
    (one rejected document in batch 1), the report records the summaries it was given."""

    def __init__(self, batches: int, delay: float = 0.05) -> None:
        self.batches, self.delay = batches, delay
        self.active = self.max_active = 0
        self.merged: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, argv: list[str]) -> int:
        if "--plan-out" in argv:
            prefix = argv[argv.index("--prefix") + 1]
            plan = [{"batch": n, "prefix": prefix, "first": f"k{n}"} for n in range(self.batches)]
            Path(argv[argv.index("--plan-out") + 1]).write_text(json.dumps(plan))
        elif "--batch" in argv:
            with self._lock:
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            time.sleep(self.delay)
            batch = json.loads(argv[argv.index("--batch") + 1])
            failures = [{"source": "s3://d/bad.pdf", "reason": "x"}] if batch["batch"] == 1 else []
            summary = {"batch": batch["batch"], "totals": {"ingested": 2}, "failures": failures}
            Path(argv[argv.index("--summary") + 1]).write_text(json.dumps(summary))
            with self._lock:
                self.active -= 1
        elif "--merge" in argv:
            self.merged = json.loads(argv[argv.index("--merge") + 1])
        return 0


def _backfill(manifests, runner, prefix: str = "s3://documents/handbooks/") -> gateway.WorkflowRun:
    engine = gateway.WorkflowEngine(manifests, runner)
    [name] = [n for n in engine.templates if n.endswith("-ingest-backfill")]
    run = engine.submit(
        {
            "metadata": {"name": "backfill-1"},
            "spec": {
                "workflowTemplateRef": {"name": name},
                "arguments": {"parameters": [{"name": "prefix", "value": prefix}]},
            },
        }
    )
    assert run is not None
    return engine.execute(run)


def test_backfill_fans_out_under_the_workflows_parallelism_and_fans_in(manifests):
    [template] = [
        m
        for m in manifests
        if m.get("kind") == "WorkflowTemplate" and m["metadata"]["name"].endswith("-backfill")
    ]
    cap = template["spec"]["parallelism"]
    runner = BackfillSteps(batches=cap * 2 + 1)
    run = _backfill(manifests, runner)
    assert run.status == "Succeeded", run.message
    assert 1 < runner.max_active <= cap or cap == 1
    batches = [s for s in run.steps if s["name"].startswith("ingest(")]
    assert len(batches) == cap * 2 + 1
    # Every batch got its own item, with the prefix the Workflow was given.
    items = [json.loads(s["argv"][s["argv"].index("--batch") + 1]) for s in batches]
    assert sorted(i["batch"] for i in items) == list(range(cap * 2 + 1))
    assert {i["prefix"] for i in items} == {"s3://documents/handbooks/"}
    # The fan-in gets every batch's summary, in batch order, as Argo aggregates them.
    summaries = [json.loads(s) for s in runner.merged]
    assert [s["batch"] for s in summaries] == list(range(cap * 2 + 1))
    assert summaries[1]["failures"] == [{"source": "s3://d/bad.pdf", "reason": "x"}]


def test_an_empty_backfill_skips_the_fan_out_and_the_report(manifests):
    runner = BackfillSteps(batches=0)
    run = _backfill(manifests, runner)
    assert run.status == "Succeeded"
    assert run.phases == {"plan": "Succeeded", "ingest": "Skipped", "report": "Omitted"}
    assert runner.merged == []
