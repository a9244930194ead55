"""The local event gateway agrees with the chart's Sensors and WorkflowTemplates.

The gateway interprets the objects the chart renders; these tests feed it the real-shaped
payloads from ../shared/samples and check the Workflows it would submit and run: the same
filters (firing + retrain only), the same parameters (raw keys, alert name and labels), the
same cooldown and one-at-a-time rule.
"""

from __future__ import annotations

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


class Recorder:
    """A step runner that records argv and answers with scripted exit codes."""

    def __init__(self, codes: dict[str, list[int]] | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.codes = codes or {}
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, argv: list[str]) -> int:
        with self._lock:
            self.calls.append(argv)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        with self._lock:
            self.active -= 1
        queue = self.codes.get(argv[1], [])
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
    subcommands = [argv[1] for argv in runner.calls]
    assert subcommands[:4] == ["prepare-data", "finetune", "evaluate", "promote"]
    finetune = runner.calls[1]
    assert finetune[0] == "bigbertha"
    assert finetune[finetune.index("--alert-name") + 1] == "BigBerthaNegativeFeedbackHigh"
    assert any(a.startswith("s3://") and run.name in a for a in finetune)
    assert run.status == "Succeeded"
    # The exit handler ran last, with the workflow's status.
    assert runner.calls[-1][1] == "retrain" and "Succeeded" in runner.calls[-1]


def test_the_sensor_sees_argo_event_data_shape(manifests, shared_dir):
    # Argo's webhook event data for the same POST is what the Sensor filters see.
    argo_data = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    (trigger,) = [t for t in gateway.triggers_from(manifests) if "retrain" in t.sensor]
    assert trigger.matches(trigger.event_source, trigger.event_name, argo_data)
    workflow = trigger.workflow(argo_data, now=1_000_000)
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


def test_cooldown_refuses_a_second_run_in_the_same_window(manifests, shared_dir):
    runner = Recorder()
    gw = _gateway(manifests, runner)
    (trigger,) = [t for t in gw.triggers if "retrain" in t.sensor]
    body = _sample(shared_dir, "alertmanager-webhook-firing.json")
    data = gateway.webhook_event(body, AUTH)
    first = gw.engine.submit(trigger.workflow(data, now=10_000))
    storm = [gw.engine.submit(trigger.workflow(data, now=10_000 + i)) for i in range(1, 50)]
    later = gw.engine.submit(trigger.workflow(data, now=10_000 + 24 * 3600))
    assert first is not None and later is not None
    assert storm == [None] * 49


def test_mutex_runs_one_retraining_at_a_time(manifests, shared_dir):
    runner = Recorder(delay=0.05)
    gw = _gateway(manifests, runner)
    (trigger,) = [t for t in gw.triggers if "retrain" in t.sensor]
    data = gateway.webhook_event(_sample(shared_dir, "alertmanager-webhook-firing.json"), AUTH)
    runs = [gw.engine.submit(trigger.workflow(data, now=t * 10**6)) for t in (1, 2)]
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
    assert [a[1] for a in runner.calls] == ["prepare-data", "finetune", "retrain"]
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
        response = client.post("/minio", json=body)
        assert response.status_code == 400
        assert response.get_json()["error"].startswith("minio notification: ")


def test_unauthenticated_posts_are_refused_before_the_body_is_read(manifests):
    gw = _gateway(manifests, Recorder())
    client = gw.flask_app().test_client()
    response = client.post(_alert_endpoint(gw), data=b"[" * 100_000)
    assert response.status_code == 401 and response.get_json() == {"error": "unauthorized"}


def test_waitress_refuses_an_oversized_body_with_413(manifests):
    import urllib.error
    import urllib.request

    from waitress.server import create_server

    from tests.services import free_port

    gw = _gateway(manifests, Recorder())
    port = free_port()
    server = create_server(
        gw.flask_app(), host="127.0.0.1", port=port, threads=2, **gateway.SERVER_LIMITS
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        body = b'{"pad": "' + b"x" * (gateway.MAX_BODY_BYTES + 1) + b'"}'
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{_alert_endpoint(gw)}", data=body, headers=AUTH
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 413
    finally:
        server.close()
        thread.join(5)
