"""The first loop's alerting half on real processes: recorder -> Redis -> exporter -> Prometheus
(the chart's rules) -> Alertmanager (the chart's AlertmanagerConfig) -> a webhook receiver.

Windows and `for` durations are shrunk through a values override, exactly as an operator would
edit them; everything else is the chart's own output.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bigbertha.core.settings import load
from bigbertha.local.alerting import alertmanager_yaml
from bigbertha.telemetry.recorder import Recorder
from tests.chart.render import NAMESPACE, RELEASE, one, render
from tests.services import Service, ServiceManager, free_port, require_binary

pytestmark = pytest.mark.slow

TOKEN = "s3cret-webhook-token"
MODEL = "bigbertha-llm"
FAST = {
    "monitoring": {
        "rules": {
            "interval": "1s",
            "negativeFeedback": {"window": "15s", "minVotes": 5, "for": "2s"},
            "errorRate": {"window": "15s", "minRequests": 5, "for": "2s"},
            "redisDown": {"for": "2s"},
        },
        "alertmanagerConfig": {"groupWait": "1s", "groupInterval": "2s", "repeatInterval": "1h"},
    }
}


class Receiver:
    """The webhook EventSource's stand-in: records every POST (headers and JSON body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alertnames(self) -> set[str]:
        return {a["labels"]["alertname"] for r in self.requests for a in r["body"]["alerts"]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(check: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def prometheus_alerts(prometheus: Service, state: str = "firing") -> set[str]:
    alerts = get_json(f"{prometheus.url}/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == state}


def alertmanager_alerts(alertmanager: Service) -> set[str]:
    alerts = get_json(f"{alertmanager.url}/api/v2/alerts?active=true")
    return {a["labels"]["alertname"] for a in alerts}


def routed_to(alertmanager: Service, alertname: str) -> set[str]:
    """The receivers Alertmanager routed an active alert to (empty while it is not there)."""
    alerts = get_json(f"{alertmanager.url}/api/v2/alerts?active=true")
    return {
        r["name"] for a in alerts if a["labels"]["alertname"] == alertname for r in a["receivers"]
    }


def webhook_notifications(alertmanager: Service) -> tuple[float, float]:
    """(attempted, requests) of Alertmanager's webhook integration, from its own /metrics.

    `attempted` counts every notification the pipeline ran for the webhook, including a
    resolution it does not send (send_resolved: false); `requests` counts the HTTP requests made.
    """
    with urllib.request.urlopen(f"{alertmanager.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    names = ("alertmanager_notifications_total", "alertmanager_notification_requests_total")
    values = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values and sample.labels.get("integration") == "webhook":
                values[sample.name] = sample.value
    return values[names[0]], values[names[1]]


@pytest.fixture(scope="module")
def stack(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    docs = render(FAST)
    rule = one(docs, "PrometheusRule", f"{RELEASE}-alerts")
    amc = one(docs, "AlertmanagerConfig", f"{RELEASE}-retrain")
    receiver = Receiver()
    config = alertmanager_yaml(amc, namespace=NAMESPACE, url=receiver.url, token=TOKEN)
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager.yml"
    path.write_text(config)
    amtool = require_binary("amtool")
    check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    redis_server = services.redis()
    port = free_port()
    exporter = services.bigbertha(
        "exporter",
        ["exporter", "--host", "127.0.0.1", "--port", str(port)],
        port,
        env={"BIGBERTHA_REDIS__URL": str(redis_server.extra["url"])},
    )
    alertmanager = services.alertmanager(config)
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]
        },
        "scrape_configs": [
            {
                # What the ServiceMonitor produces: job = the exporter Service, its namespace.
                "job_name": f"{RELEASE}-exporter",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"namespace": NAMESPACE}}
                ],
            }
        ],
    }
    prometheus = services.prometheus(
        # The operator mounts the PrometheusRule's spec (its groups) as a rule file.
        yaml.safe_dump(prometheus_config),
        {"rules.yaml": yaml.safe_dump(rule["spec"])},
    )
    # A generous write timeout: this test is about alerting, not about a loaded machine.
    settings = load(overrides={"redis": {"url": redis_server.extra["url"], "timeout_seconds": 1}})
    yield {
        "receiver": receiver,
        "prometheus": prometheus,
        "alertmanager": alertmanager,
        "recorder": Recorder.from_settings(settings),
        "redis": redis_server,
    }
    receiver.close()


def test_bad_ratings_start_retraining_and_only_retraining(stack: dict):
    receiver: Receiver = stack["receiver"]
    prometheus: Service = stack["prometheus"]
    recorder: Recorder = stack["recorder"]
    recorder.set_serving_model("3")
    query = urllib.parse.quote('bigbertha_feedback_total{rating="down"}')
    wait_for(
        lambda: get_json(f"{prometheus.url}/api/v1/query?query={query}")["data"]["result"],
        "Prometheus to scrape the zero-valued feedback series",
    )

    for n in range(8):  # 8 of 10 votes down, by 8 people, and 8 of 8 answers failed
        recorder.record_feedback("3", "down", person=f"person-{n}")
        recorder.record_answer(
            "3",
            latency_s=0.4,
            ttft_s=0.1,
            prompt_tokens=50,
            completion_tokens=0,
            scores=[0.7],
            context_chunks=1,
            error=True,
        )
    recorder.record_feedback("3", "up")
    recorder.record_feedback("3", "up")
    assert recorder.dropped == 0

    wait_for(lambda: receiver.requests, "the retrain alert at the webhook")
    request = receiver.requests[0]
    assert request["path"] == "/alerts"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = request["body"]
    assert body["status"] == "firing"
    (alert,) = body["alerts"]
    assert alert["labels"] == {
        "alertname": "BigBerthaNegativeFeedbackHigh",
        "bigbertha_action": "retrain",
        "bigbertha_release": RELEASE,
        "namespace": NAMESPACE,
        "model": MODEL,
        "model_version": "3",
        "severity": "warning",
    }
    assert alert["annotations"]["summary"].startswith("80% of the votes")
    assert alert["annotations"]["runbook_url"].endswith("#bigberthanegativefeedbackhigh")

    # The page alert fired too and reached Alertmanager, which routed it away from the webhook
    # (the route is the decision: only the retrain receiver has the webhook).
    alertmanager: Service = stack["alertmanager"]
    retrain_receiver = f"{NAMESPACE}/{RELEASE}-retrain/retrain-webhook"
    assert routed_to(alertmanager, "BigBerthaNegativeFeedbackHigh") == {retrain_receiver}
    page_route = wait_for(
        lambda: routed_to(alertmanager, "BigBerthaErrorRateHigh"),
        "the page-only alert in Alertmanager",
    )
    assert page_route == {"null"}
    assert receiver.alertnames() == {"BigBerthaNegativeFeedbackHigh"}

    # No more votes: the window empties and the alert resolves. Alertmanager runs the webhook's
    # pipeline for the resolution (attempted + 1) but sends nothing (send_resolved: false).
    sent = len(receiver.requests)
    attempted, requests = webhook_notifications(alertmanager)
    assert requests == sent
    wait_for(
        lambda: webhook_notifications(alertmanager)[0] > attempted,
        "Alertmanager to process the retrain alert's resolution",
        timeout=90,
    )
    assert "BigBerthaNegativeFeedbackHigh" not in prometheus_alerts(prometheus)
    assert webhook_notifications(alertmanager) == (attempted + 1, requests)
    assert len(receiver.requests) == sent
    assert all(r["body"]["status"] == "firing" for r in receiver.requests)


def test_redis_stopped_pages_without_retraining_and_chats_go_on(stack: dict):
    receiver: Receiver = stack["receiver"]
    recorder: Recorder = stack["recorder"]
    sent, dropped = len(receiver.requests), recorder.dropped
    stack["redis"].stop()
    started = time.perf_counter()
    for _ in range(20):
        recorder.record_feedback("3", "down")
    assert time.perf_counter() - started < 0.5
    assert recorder.dropped == dropped + 20

    prometheus: Service = stack["prometheus"]
    query = urllib.parse.quote("bigbertha_exporter_redis_up")
    result = wait_for(
        lambda: [
            r
            for r in get_json(f"{prometheus.url}/api/v1/query?query={query}")["data"]["result"]
            if r["value"][1] == "0"
        ],
        "the exporter to report Redis down",
    )
    assert result[0]["metric"]["job"] == f"{RELEASE}-exporter"
    route = wait_for(
        lambda: routed_to(stack["alertmanager"], "BigBerthaRedisDown"),
        "BigBerthaRedisDown in Alertmanager",
    )
    assert route == {"null"}, "a page alert is routed to the retrain webhook"
    assert len(receiver.requests) == sent, "a page alert reached the retrain webhook"
