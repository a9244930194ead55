"""ServiceManager from a relative base directory, as `bigbertha demo` gets it by default."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.services import ServiceManager


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


RULES = """
groups:
  - name: probe
    rules:
      - alert: AlwaysFiring
        expr: vector(1)
"""


@pytest.mark.slow
def test_every_service_starts_from_a_relative_base_directory(tmp_path, monkeypatch):
    # Each service runs in its own working directory below the base: a path handed to it
    # relative to the caller's directory (the alertmanager.yml) would not be found.
    monkeypatch.chdir(tmp_path)
    manager = ServiceManager(Path(".bigbertha/run"))
    assert manager.base == tmp_path / ".bigbertha" / "run"
    try:
        # Started together, waited for together: what the demo does with its slow starters.
        started = [
            manager.redis(wait=False),
            manager.prometheus(
                "global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n",
                {"rules.yml": RULES},
                wait=False,
            ),
            manager.alertmanager(
                "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n", wait=False
            ),
            manager.s3(wait=False),
            manager.mlflow(wait=False),
            manager.milvus(wait=False),
        ]
        for service in started:
            service.wait_ready()
            assert service.workdir.parent == manager.base, service.name
        redis_svc, prom, am, s3, mlflow_svc, milvus_svc = started

        import redis

        assert redis.Redis.from_url(str(redis_svc.extra["url"])).ping() is True

        groups = _get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
        assert [g["name"] for g in groups] == ["probe"]  # the rule file beside its config
        assert (prom.workdir / "data").is_dir()

        status = _get_json(f"{am.url}/api/v2/status")
        assert "blackhole" in status["config"]["original"]
        assert (am.workdir / "data").is_dir()

        from minio import Minio

        client = Minio(
            str(s3.extra["endpoint"]),
            access_key=str(s3.extra["access_key"]),
            secret_key=str(s3.extra["secret_key"]),
            secure=False,
        )
        client.make_bucket("relative")
        assert client.bucket_exists("relative")

        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(tracking_uri=mlflow_svc.url).create_experiment(
            f"relative-{uuid.uuid4().hex[:8]}"
        )
        assert experiment
        assert (mlflow_svc.workdir / "mlflow.db").is_file()

        from pymilvus import MilvusClient

        milvus = MilvusClient(uri=str(milvus_svc.extra["uri"]))
        milvus.create_collection("relative", dimension=4)
        milvus.insert("relative", [{"id": 7, "vector": [0, 0, 1, 0]}])
        assert milvus.search("relative", data=[[0, 0, 1, 0]], limit=1)[0][0]["id"] == 7
        milvus.close()
        assert (milvus_svc.workdir / "data").is_dir()
    finally:
        assert manager.stop_all() == []


def test_an_interrupt_during_a_launch_waits_until_the_process_is_recorded():
    import os
    import signal

    from bigbertha.local.stack import signals_held

    order: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: order.append("SIGTERM handled"))
    # Ctrl-C as the demo handles it, also under a runner started with SIGINT ignored.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            order.append("recorded")  # still runs: the signals wait
        assert order == ["recorded", "SIGTERM handled"]
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
