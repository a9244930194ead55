"""The harness itself: every real service starts, answers a real request, and stops by PID."""

from __future__ import annotations

import io
import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.services import ServiceManager, pid_alive


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_redis_answers_ping(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.extra["url"])
    assert client.ping() is True
    client.set("bigbertha:probe", "1")
    assert client.get("bigbertha:probe") == b"1"


def test_prometheus_scrapes_a_target(services: ServiceManager):
    # Prometheus scrapes itself: a real scrape loop, read back through the query API.
    config = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: self
    static_configs: [{targets: ["127.0.0.1:PORT"]}]
"""
    prom = services.prometheus(config.replace("PORT", "0"))
    # The port is known only after start; reload with the real target.
    (prom.workdir / "prometheus.yml").write_text(config.replace("PORT", str(prom.port)))
    urllib.request.urlopen(urllib.request.Request(f"{prom.url}/-/reload", method="POST"), timeout=5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = _get_json(f"{prom.url}/api/v1/query?query=up%7Bjob%3D%22self%22%7D")["data"][
            "result"
        ]
        if result and result[0]["value"][1] == "1":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"prometheus never scraped itself:\n{prom.log_tail()}")
    prom.stop()
    assert not pid_alive(prom.pid)


def test_alertmanager_accepts_and_lists_an_alert(services: ServiceManager):
    config = "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n"
    am = services.alertmanager(config)
    alert = [{"labels": {"alertname": "HarnessProbe", "run": uuid.uuid4().hex}}]
    request = urllib.request.Request(
        f"{am.url}/api/v2/alerts",
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5)
    with urllib.request.urlopen(f"{am.url}/api/v2/alerts", timeout=5) as response:
        alerts = json.load(response)
    assert [a["labels"]["run"] for a in alerts] == [alert[0]["labels"]["run"]]
    am.stop()


def test_s3_bucket_put_get_with_the_minio_client(s3_server):
    from minio import Minio

    client = Minio(
        s3_server.extra["endpoint"],
        access_key=s3_server.extra["access_key"],
        secret_key=s3_server.extra["secret_key"],
        secure=False,
    )
    client.make_bucket("harness")
    body = "héllo wörld".encode()
    client.put_object("harness", "docs/a file.txt", io.BytesIO(body), len(body))
    response = client.get_object("harness", "docs/a file.txt")
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()


@pytest.mark.slow
def test_mlflow_logs_a_run(mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.create_experiment(f"harness-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.set_terminated(run.info.run_id)
    fetched = client.get_run(run.info.run_id)
    assert fetched.data.metrics["loss"] == 0.5
    assert fetched.info.status == "FINISHED"


@pytest.mark.slow
def test_milvus_creates_and_searches_a_collection(milvus_server):
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.extra["uri"])
    client.create_collection("harness", dimension=4)
    client.insert("harness", [{"id": 1, "vector": [1, 0, 0, 0]}, {"id": 2, "vector": [0, 1, 0, 0]}])
    hits = client.search("harness", data=[[0.9, 0.1, 0, 0]], limit=1)
    assert hits[0][0]["id"] == 1
    client.close()


def test_stop_all_leaves_no_process(tmp_path: Path):
    manager = ServiceManager(tmp_path)
    redis_service = manager.redis()
    assert pid_alive(redis_service.pid)
    assert manager.stop_all() == []
    assert not pid_alive(redis_service.pid)
