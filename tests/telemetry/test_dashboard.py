"""The Grafana dashboard: generated file in sync, PromQL valid, metrics real, chart ConfigMap.

The end-to-end test scrapes the real exporter (over a real Redis) with a real Prometheus and runs
every panel query against it: a panel that would show "No data" on a live system fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.settings import Settings
from bigbertha.telemetry import dashboard
from bigbertha.telemetry import recorder as telemetry
from tests.chart.render import render
from tests.services import Service, ServiceManager, free_port, require_binary
from tests.serving.fake_vllm import FakeVllm
from tests.telemetry.helpers import record_traffic

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / dashboard.CHART_PATH
NAMESPACE = "bigbertha"
MODEL = "bigbertha-llm"
#: Grafana's variables, as a 30s-scrape Prometheus and the defaults would fill them in.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$namespace": NAMESPACE,
    "$model": MODEL,
    f"${dashboard.THRESHOLD_VARIABLE}": str(dashboard.DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD),
    f"${dashboard.WINDOW_VARIABLE}": dashboard.DEFAULT_NEGATIVE_FEEDBACK_WINDOW,
}
METRIC = re.compile(r"\b(bigbertha_[a-z0-9_]+|ALERTS)\b")


def substitute(expr: str, variables: dict[str, str] = VARIABLES) -> str:
    # Longest names first: $__range must not eat the start of a longer variable.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(dashboard.render())


@pytest.fixture(scope="module")
def exprs(document: dict[str, Any]) -> list[tuple[str, str]]:
    found = dashboard.queries(document)
    assert found, "the dashboard has no Prometheus query"
    return found


def test_committed_dashboard_is_the_generated_one() -> None:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing: run `bigbertha dashboard`"
    assert COMMITTED.read_text() == dashboard.render(), (
        f"{dashboard.CHART_PATH} is outdated: run `bigbertha dashboard`"
    )


def test_dashboard_has_the_panels_operators_need(document: dict[str, Any]) -> None:
    titles = {p["title"] for p in document["panels"] if p["type"] != "row"}
    assert titles >= {
        "Request rate",
        "Answer latency p50 / p95",
        "Time to first token p50 / p95",
        "Tokens per second",
        "Negative feedback ratio",
        "Retrieval score distribution",
        "Empty retrieval rate",
        "Firing alerts",
        "Retraining runs",
        "Promotions",
        "Serving model version",
        "Tier requests in flight",
        "Tier KV-cache usage",
        "Tier latency p95",
        "Tier token throughput",
    }
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids, f"panel ids must be unique: {ids}"
    # Every panel reads the chosen Prometheus, never a hard-coded datasource uid.
    for item in document["panels"]:
        if item["type"] != "row":
            assert item["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # The grid: no panel overlaps another, none sticks out of the 24 columns.
    cells: set[tuple[int, int]] = set()
    for item in document["panels"]:
        pos = item["gridPos"]
        assert pos["x"] + pos["w"] <= 24, item["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {item['title']!r} overlaps another"
        cells |= area


def test_feedback_panel_draws_the_alert_threshold(document: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in document["templating"]["list"]}
    threshold = variables[dashboard.THRESHOLD_VARIABLE]
    assert threshold["type"] == "constant" and threshold["query"] == "0.3"
    panel = next(p for p in document["panels"] if p["title"] == "Negative feedback ratio")
    exprs = [t["expr"] for t in panel["targets"]]
    assert f"vector(${dashboard.THRESHOLD_VARIABLE})" in exprs


def test_every_query_passes_promtool(exprs: list[tuple[str, str]], tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = [
        {"record": f"bigbertha:dashboard_query:{n}", "expr": substitute(expr)}
        for n, (_, expr) in enumerate(exprs)
    ]
    good = tmp_path / "dashboard-rules.yaml"
    good.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout

    # The same check rejects a broken query (the harness can fail).
    bad = tmp_path / "broken-rules.yaml"
    broken = {"record": "bigbertha:broken", "expr": substitute(exprs[0][1])[:-1]}
    bad.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [broken]}]}))
    result = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0


def metric_names(exprs: list[tuple[str, str]]) -> set[str]:
    return {name for _, expr in exprs for name in METRIC.findall(expr)}


@pytest.fixture(scope="module")
def exporter(redis_server: Service) -> Iterator[str]:
    """The real exporter (waitress) over a Redis holding one of every telemetry event."""
    import redis as redis_lib

    from bigbertha.telemetry.exporter import make_server

    url = str(redis_server.extra["url"]).rsplit("/", 1)[0] + "/7"  # a db of its own
    redis_lib.Redis.from_url(url).flushdb()
    settings = Settings(redis={"url": url}, exporter={"host": "127.0.0.1", "port": free_port()})
    recorder = telemetry.Recorder(telemetry.redis_client(url, 1.0), MODEL)
    # A rejected event counts as dropped; the next write reports it (bigbertha_telemetry_dropped).
    recorder.record_retrain_run("not-a-result")
    record_traffic(recorder, "3")
    recorder.record_feedback("3", "up")
    recorder.record_retrain_run("succeeded")
    server = make_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"127.0.0.1:{settings.exporter.port}"
    server.close()
    thread.join(5)


def exposed_names(target: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://{target}/metrics", timeout=5).text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_is_one_the_exporter_exposes(
    exporter: str, exprs: list[tuple[str, str]]
) -> None:
    exposed = exposed_names(exporter)
    used = metric_names(exprs) - {"ALERTS"}  # ALERTS is Prometheus' own series
    missing = used - exposed
    assert not missing, f"dashboard queries metrics the exporter does not expose: {missing}"
    # And the dashboard covers every metric family of the contract.
    families = {spec.name for spec in (*telemetry.STORED, telemetry.MODEL_INFO, telemetry.REDIS_UP)}
    used_families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families <= used_families, f"no panel shows {families - used_families}"


@pytest.fixture(scope="module")
def vllm() -> Iterator[str]:
    """The inference tier's metrics: the stand-in for vLLM 0.33.0 after one answer."""
    server = FakeVllm(model="/models/base", served_names=["base"]).start()
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
    requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=10).raise_for_status()
    yield server.url.removeprefix("http://")
    server.stop()


def test_every_tier_metric_is_one_vllm_exposes(vllm: str, exprs: list[tuple[str, str]]) -> None:
    """The fake's names are those of vLLM 0.33.0's v1/metrics/loggers.py (fake_vllm.py)."""
    used = {name for _, expr in exprs for name in re.findall(r"\bvllm:[a-z0-9_]+", expr)}
    assert used, "no panel shows the inference tier"
    assert used <= exposed_names(vllm)


@pytest.fixture(scope="module")
def prometheus(services: ServiceManager, exporter: str, vllm: str) -> Iterator[Service]:
    """A real Prometheus scraping the exporter and the tier every second, with one BigBertha
    alert firing."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["probe-rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "bigbertha-exporter",
                "static_configs": [{"targets": [exporter], "labels": {"namespace": NAMESPACE}}],
            },
            {
                "job_name": "bigbertha-vllm",
                "static_configs": [{"targets": [vllm], "labels": {"namespace": NAMESPACE}}],
            },
        ],
    }
    probe = {
        "groups": [
            {
                "name": "probe",
                "rules": [
                    {
                        "alert": "BigBerthaDashboardProbe",
                        "expr": "bigbertha_exporter_redis_up == 1",
                        "labels": {"severity": "info"},
                    }
                ],
            }
        ]
    }
    service = services.prometheus(
        yaml.safe_dump(config), {"probe-rules.yaml": yaml.safe_dump(probe)}
    )
    yield service
    service.stop()  # before the exporter closes: no scrape races the shutdown


def query(prom: Service, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=5)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_panel_shows_data_from_a_live_exporter(
    prometheus: Service, exprs: list[tuple[str, str]]
) -> None:
    # Grafana's $__rate_interval is at least four scrape intervals.
    variables = {
        **VARIABLES,
        "$__rate_interval": "10s",
        "$__range": "1m",
        f"${dashboard.WINDOW_VARIABLE}": "10s",
    }
    deadline = time.monotonic() + 30
    pending = dict.fromkeys((title, substitute(e, variables)) for title, e in exprs)
    while pending and time.monotonic() < deadline:
        for title, expr in list(pending):
            if query(prometheus, expr):
                del pending[title, expr]
        if pending:
            time.sleep(0.5)
    assert not pending, "panels without data: " + "; ".join(f"{t}: {e}" for t, e in pending)
    # The model variable's query finds the model the chatbot labels its series with.
    values = requests.get(
        f"{prometheus.url}/api/v1/label/model/values",
        params={"match[]": f'bigbertha_chat_requests_total{{namespace="{NAMESPACE}"}}'},
        timeout=5,
    ).json()["data"]
    assert values == [MODEL]


def chart_dashboard(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        d
        for d in render(values)
        if d["kind"] == "ConfigMap"
        and d["__template"].endswith("templates/dashboards/configmap.yaml")
    ]


def test_chart_ships_the_dashboard_for_the_grafana_sidecar(shared_dir: Path) -> None:
    upstream = yaml.safe_load(
        (shared_dir / "upstream/kube-prometheus-stack-88.5.3/values.yaml").read_text()
    )
    sidecar = upstream["grafana"]["sidecar"]["dashboards"]
    (configmap,) = chart_dashboard({})
    assert configmap["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
    shipped = json.loads(configmap["data"]["bigbertha.json"])
    assert shipped == json.loads(COMMITTED.read_text())


def test_chart_draws_the_threshold_the_alert_uses() -> None:
    # The generated defaults are the rule's defaults...
    rule = yaml.safe_load((ROOT / "values.yaml").read_text())["monitoring"]["rules"]
    assert rule["negativeFeedback"]["threshold"] == dashboard.DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD
    assert rule["negativeFeedback"]["window"] == dashboard.DEFAULT_NEGATIVE_FEEDBACK_WINDOW
    # ... and a tuned rule moves the line and the window with it.
    (configmap,) = chart_dashboard(
        {"monitoring": {"rules": {"negativeFeedback": {"threshold": 0.45, "window": "2h"}}}}
    )
    shipped = json.loads(configmap["data"]["bigbertha.json"])
    variables = {v["name"]: v["query"] for v in shipped["templating"]["list"]}
    assert variables[dashboard.THRESHOLD_VARIABLE] == "0.45"
    assert variables[dashboard.WINDOW_VARIABLE] == "2h"


def test_chart_dashboard_label_and_switch() -> None:
    (configmap,) = chart_dashboard(
        {
            "dashboards": {
                "label": "team/dashboard",
                "labelValue": "llmops",
                "annotations": {"grafana_folder": "LLMOps"},
            }
        }
    )
    assert configmap["metadata"]["labels"]["team/dashboard"] == "llmops"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLMOps"}
    assert chart_dashboard({"dashboards": {"enabled": False}}) == []


def test_cli_writes_the_dashboard(tmp_path: Path) -> None:
    out = tmp_path / "d" / "bigbertha.json"
    result = CliRunner().invoke(
        app, ["dashboard", "--output", str(out), "--negative-feedback-threshold", "0.2"]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert {v["name"]: v["query"] for v in written["templating"]["list"]}[
        dashboard.THRESHOLD_VARIABLE
    ] == "0.2"

    result = CliRunner().invoke(
        app, ["dashboard", "--output", str(out), "--negative-feedback-threshold", "1.5"]
    )
    assert result.exit_code == 2
    assert "must be a ratio between 0 and 1" in result.output
