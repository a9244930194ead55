"""The whole platform on 127.0.0.1: services, the chart's rendered objects, settings, gateway.

State lives under the demo's working directory: `run/` (each service's directory, logs, the
settings home) is this run's and starts empty; `cache/` keeps what stays valid from one run to
the next (SmolLM2's dequantised weights). A lock file keeps two demos out of one directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path
from typing import IO, Any

import yaml

from bigbertha.core.errors import Busy, ExitCode
from bigbertha.local.stack import (
    Service,
    ServiceManager,
    free_port,
    http_ok,
    pid_alive,
    stop_group,
)
from bigbertha.local.timeline import DemoFailed, Stage, Timeline, get_json, wait_for
from bigbertha.local.tiny_llama import tiny_llama

RELEASE = NAMESPACE = "bigbertha"  # what the chart is rendered as (its objects' names)
VALUES = ("values/local.yaml", "values/demo.yaml")  # in the chart's directory
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
SEED_DOCS = ("README.md", "docs/runbooks.md", "docs/install.md", "docs/rollback.md")
QUESTIONS = (
    "How do I roll back the champion model?",
    "What does the negative feedback alert mean?",
    "How is BigBertha installed on a cluster?",
    "What happens when a document is uploaded to MinIO?",
)


class LocalPlatform:
    """The local stack: services, rendered chart objects, settings env, gateway."""

    def __init__(
        self, workdir: Path, margin: float | None, values: tuple[str, ...], tiny: bool = False
    ) -> None:
        from bigbertha.local import chart

        self.root = chart.root()  # the chart, and the docs the scenario uploads
        files = [self.root / name for name in values]
        self.tiny = tiny
        # Absolute: services run in their own directories below it and get paths from it.
        self.workdir = workdir.expanduser().absolute()
        self.services = ServiceManager(self.workdir / "run")
        self._lock: IO[str] | None = None
        self._steps: set[subprocess.Popen[bytes]] = set()  # workflow steps running
        self._steps_lock = threading.Lock()
        self._stopping = False
        self.chat: Service | None = None
        self.urls: dict[str, str] = {}
        self.token = secrets.token_urlsafe(24)
        overrides: dict[str, Any] = {}
        if margin is not None:
            overrides = {"settings": {"promote": {"margin": margin}}}
        self.objects = chart.render(files, overrides, release=RELEASE, namespace=NAMESPACE)
        self.values = chart.load_values([self.root / "values.yaml", *files], overrides)
        self.gateway_server: Any = None
        self.env: dict[str, str] = {}

    def manifest(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [
            o for o in self.objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)
        ]
        if len(found) != 1:
            raise DemoFailed(f"chart rendered {len(found)} {kind} objects named *{suffix}")
        return found[0]

    def settings_env(self) -> dict[str, str]:
        """The chart's settings ConfigMap, with the wiring pointed at the local services."""
        data = dict(self.manifest("ConfigMap", "-settings")["data"])
        return {k: v for k, v in data.items() if k.startswith("BIGBERTHA_")}

    @property
    def claimed(self) -> bool:
        """Whether this run holds the working directory (and may write its report)."""
        return self._lock is not None

    def claim_workdir(self) -> None:
        """Lock the working directory for this run and clear the last run's state (`run/`).

        Busy when another demo runs here. A new run gets fresh services, so the settings home
        must not keep the last run's registry downloads: a fresh MLflow numbers its versions
        from 1 again, and a cached "version 1" would be the old run's model.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        lock = (self.workdir / "demo.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            lock.close()
            raise Busy(
                f"another bigbertha demo (pid {owner}) is running in {self.workdir}: "
                "stop it, or pass another --workdir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        shutil.rmtree(self.services.base, ignore_errors=True)

    def start(self, timeline: Timeline) -> None:
        """Every service but the chatbot, and the gateway. MLflow, the slowest to start,
        keeps starting in the background (`start_chatbot` waits for it)."""
        self.claim_workdir()
        svc = self.services
        self._mlflow_stage = timeline.begin("start mlflow")
        self.mlflow = svc.mlflow(wait=False)
        with timeline.stage("start services") as st:
            redis = svc.redis(password=secrets.token_urlsafe(12), wait=False)
            s3 = svc.s3(wait=False)
            milvus = svc.milvus(wait=False)
            for service in (redis, s3, milvus):
                service.wait_ready()
            home = self.services.base / "home"
            home.mkdir(parents=True, exist_ok=True)
            # The dequantised SmolLM2 copy is valid from run to run (loading._dequantized_copy).
            cache = self.workdir / "cache" / "gguf"
            cache.mkdir(parents=True, exist_ok=True)
            (home / "models").mkdir()
            (home / "models" / "gguf").symlink_to(cache)
            exporter_port, self.chat_port = free_port(), free_port()
            self.env = {
                **os.environ,
                **self.settings_env(),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "BIGBERTHA_HOME": str(home),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "BIGBERTHA_LOG__FORMAT": "json",
                "BIGBERTHA_REDIS__URL": str(redis.extra["url"]),
                "BIGBERTHA_S3__ENDPOINT": str(s3.extra["endpoint"]),
                "BIGBERTHA_S3__ACCESS_KEY": str(s3.extra["access_key"]),
                "BIGBERTHA_S3__SECRET_KEY": str(s3.extra["secret_key"]),
                "BIGBERTHA_S3__SECURE": "false",
                "BIGBERTHA_MILVUS__URI": str(milvus.extra["uri"]),
                "BIGBERTHA_MLFLOW__TRACKING_URI": self.mlflow.url,
                "BIGBERTHA_EXPORTER__HOST": "127.0.0.1",
                "BIGBERTHA_EXPORTER__PORT": str(exporter_port),
                "BIGBERTHA_CHAT__PORT": str(self.chat_port),
            }
            self._make_buckets()
            self.env.update(self._datasets())
            if self.tiny:
                self.env.update(self._tiny_model())
            exporter = svc.bigbertha("exporter", ["exporter"], exporter_port, self.env, wait=False)
            gw_url = self._start_gateway()
            am = svc.alertmanager(self.alertmanager_config(gw_url), wait=False)
            prom = svc.prometheus(*self.prometheus_config(exporter_port, am.port), wait=False)
            for service in (exporter, am, prom):
                service.wait_ready()
            self.env.update(self.canary_env(prom.url))
            st.result = (
                f"redis :{redis.port}, s3 :{s3.port}, milvus :{milvus.port}, exporter "
                f":{exporter.port}, gateway :{gw_url.rsplit(':', 1)[1]}, alertmanager "
                f":{am.port}, prometheus :{prom.port}"
            )
        self.urls = {
            "prometheus": prom.url,
            "alertmanager": am.url,
            "mlflow": self.mlflow.url,
            "exporter": f"{exporter.url}/metrics",
            "gateway": gw_url,
        }
        self.prometheus, self.alertmanager_svc = prom, am

    def start_chatbot(self, timeline: Timeline) -> Stage:
        """Launch the chatbot once MLflow answers (it asks the registry for the champion first);
        its model loads in the background. `chatbot_ready` finishes the returned stage."""
        with timeline.stage(self._mlflow_stage) as st:
            self.mlflow.wait_ready()
            st.result = f"port {self.mlflow.port}"  # URLs are printed with --keep only
        stage = timeline.begin("start chatbot")
        # Ready once its API says the model is loaded; it competes with ingestion for the CPU.
        self.chat = self.services.bigbertha(
            "chat",
            ["chat"],
            self.chat_port,
            self.env,
            ready_path="/api/status",
            timeout=300,
            wait=False,
        )
        self.urls = {"chatbot": self.chat.url, **self.urls}
        return stage

    def chatbot_ready(self, timeline: Timeline, stage: Stage) -> None:
        assert self.chat is not None, "start_chatbot first"
        with timeline.stage(stage) as st:
            self.chat.wait_ready()
            status = chatbot_status(self.chat.url)
            st.result = (
                f"port {self.chat.port}, serving model version {status.get('model_version')}"
            )

    def _make_buckets(self) -> None:
        from bigbertha.core import storage

        client = storage.open_client(self.settings())
        for bucket in (
            self.values["objectStorage"]["documentsBucket"],
            self.values["objectStorage"]["artifactsBucket"],
        ):
            client.ensure_bucket(bucket)

    def _datasets(self) -> dict[str, str]:
        """Put the curated training set and the shipped golden set (questions on the seed
        documents, the gate's evaluation set of record) where the settings say they live."""
        from bigbertha.core import storage
        from bigbertha.training import evalset

        settings = self.settings()
        client = storage.open_client(settings)
        wanted = {
            "train": (settings.finetune.data[0], (DEMO_DATA / "train.jsonl").read_bytes()),
            "golden": (settings.evaluate.golden, evalset.shipped_golden()),
        }
        for name, (uri, data) in wanted.items():
            if not uri or not uri.startswith("s3://"):
                raise DemoFailed(f"settings name no s3:// {name} dataset (got {uri!r})")
            bucket, _, key = uri[len("s3://") :].partition("/")
            client.ensure_bucket(bucket)
            client.put(bucket, key, data, "application/x-ndjson")
        return {}

    def _tiny_model(self) -> dict[str, str]:
        """A tiny Llama built in code as the base model: the loop in CI time, not SmolLM2's."""

        corpus = [
            line
            for name in ("train", "eval")
            for line in (DEMO_DATA / f"{name}.jsonl").read_text().splitlines()
        ]
        base = tiny_llama(self.services.base / "tiny-base", corpus)
        return {
            "BIGBERTHA_LLM__MODEL": str(base),
            "BIGBERTHA_FINETUNE__BASE_MODEL": str(base),
            # A random tiny model answers nothing right: its perplexity is what can improve.
            "BIGBERTHA_PROMOTE__GATE_METRICS": json.dumps(["perplexity"]),
        }

    def settings(self) -> Any:
        """Settings as the child processes see them (for in-process calls)."""
        from bigbertha.core.settings import load

        keep = {k: v for k, v in self.env.items() if k.startswith("BIGBERTHA_")}
        saved = dict(os.environ)
        try:
            os.environ.update(keep)
            return load()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _start_gateway(self) -> str:
        from waitress.server import create_server

        from bigbertha.local import gateway

        def runner(argv: list[str]) -> int:
            """One workflow step as a process in its own group, which `stop` ends with the
            services (a step runs in a gateway thread: the demo's signals never reach it)."""
            log = self.services.base / "workflows.log"
            with log.open("ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode())
                out.flush()
                with self._steps_lock:
                    if self._stopping:
                        return int(ExitCode.UNAVAILABLE)
                    step = subprocess.Popen(
                        argv,
                        env=self.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                    self._steps.add(step)
                try:
                    return step.wait()
                finally:
                    with self._steps_lock:
                        self._steps.discard(step)

        self.gateway = gateway.Gateway(self.objects, runner, self.token)
        port = free_port()
        self.gateway_server = create_server(
            self.gateway.flask_app(),
            host="127.0.0.1",
            port=port,
            threads=4,
            **gateway.SERVER_LIMITS,
        )
        threading.Thread(target=self.gateway_server.run, daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        wait_for("gateway", lambda: http_ok(f"{url}/healthz"), 20, 0.2)
        return url

    def alertmanager_config(self, gateway_url: str) -> str:
        """alertmanager.yml equivalent to the chart's AlertmanagerConfig, aimed at the gateway."""
        from bigbertha.local import alerting

        amc = self.manifest("AlertmanagerConfig")
        endpoint = next(iter(self.gateway.webhooks))
        return alerting.alertmanager_yaml(
            amc, namespace=NAMESPACE, url=f"{gateway_url}{endpoint}", token=self.token
        )

    def canary_env(self, prometheus_url: str) -> dict[str, str]:
        """The settings the chart gives the canary step alone (it reads votes from Prometheus),
        with the local Prometheus for the cluster's; none when the chart runs no canary."""
        finetune = self.manifest("WorkflowTemplate", "-finetune")
        for template in finetune["spec"]["templates"]:
            if template["name"] == "canary":
                env = {
                    e["name"]: e["value"]
                    for e in template["container"].get("env", [])
                    if e["name"].startswith("BIGBERTHA_CANARY__") and "value" in e
                }
                return env | {"BIGBERTHA_CANARY__PROMETHEUS_URL": prometheus_url}
        return {}

    def prometheus_config(self, exporter_port: int, am_port: int) -> tuple[str, dict[str, str]]:
        # Every rule object the chart renders (the alerts, and the canary's when it runs one).
        groups = [
            group
            for obj in self.objects
            if obj["kind"] == "PrometheusRule"
            for group in obj["spec"]["groups"]
        ]
        timing = self.values.get("demo", {}) or {}
        config = {
            "global": {
                "scrape_interval": timing.get("scrapeInterval", "2s"),
                "evaluation_interval": timing.get("evaluationInterval", "2s"),
            },
            "rule_files": ["rules.yml"],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
            },
            "scrape_configs": [
                {
                    # The labels the ServiceMonitor's targets carry in the cluster.
                    "job_name": f"{RELEASE}-exporter",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{exporter_port}"],
                            "labels": {"namespace": NAMESPACE},
                        }
                    ],
                }
            ],
        }
        return yaml.safe_dump(config), {"rules.yml": yaml.safe_dump({"groups": groups})}

    def run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bigbertha", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> list[int]:
        """Stop the gateway, the workflow steps it runs and every service; return the PIDs
        still alive afterwards (should be none)."""
        if self.gateway_server is not None:
            self.gateway_server.close()
        with self._steps_lock:
            self._stopping = True  # no step starts from now on
            steps = list(self._steps)
        for step in steps:
            stop_group(step)
        left = [step.pid for step in steps if pid_alive(step.pid)]
        left += self.services.stop_all()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        return left


def chatbot_status(url: str) -> dict[str, Any]:
    """The running chatbot's /api/status (a 503 while loading is a status too)."""
    try:
        status: dict[str, Any] = get_json(f"{url}/api/status")
    except urllib.error.HTTPError as exc:
        status = json.load(exc)
    return status
