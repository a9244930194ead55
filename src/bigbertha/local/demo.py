"""`bigbertha demo`: both loops of the platform on one machine, as real processes.

    bigbertha demo [--keep] [--margin M] [--workdir .bigbertha/demo]

Starts redis-server, an S3 server (moto, reached through the MinIO client like MinIO), a
milvus-lite server, an MLflow server (sqlite), the exporter, Prometheus with the rules the
chart renders from values/local.yaml + values/demo.yaml, Alertmanager routing retrain alerts
(bearer token) to the local event gateway, and the chatbot (UI and JSON API). Then runs the
scenario: seed documents uploaded and ingested through the gateway, questions asked with
`bigbertha ask --server` through the running chatbot, negative ratings, the retrain alert
firing, fine-tune, evaluate, gate, promotion, the chatbot hot-swapping to the new champion and
its answers reporting the new version. Prints a live timeline and writes `<workdir>/report.html`.
Every process is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigbertha.core.errors import BigberthaError
from bigbertha.local.stack import Service, ServiceManager, free_port, http_ok

ROOT = Path(__file__).resolve().parents[3]
RELEASE = NAMESPACE = "bigbertha"  # what the chart is rendered as (its objects' names)
VALUES = (ROOT / "values" / "local.yaml", ROOT / "values" / "demo.yaml")
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
SEED_DOCS = ("README.md", "docs/runbooks.md", "docs/install.md", "docs/rollback.md")
QUESTIONS = (
    "How do I roll back the champion model?",
    "What does the negative feedback alert mean?",
    "How is BigBertha installed on a cluster?",
    "What happens when a document is uploaded to MinIO?",
)


class DemoFailed(BigberthaError):
    """A stage of the demo did not happen in time."""


@dataclass
class Stage:
    name: str
    started: float
    finished: float | None = None
    result: str = ""
    ok: bool | None = None


@dataclass
class Timeline:
    """The live terminal timeline and what the report is built from."""

    t0: float = field(default_factory=time.time)
    stages: list[Stage] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def print(self, stage: Stage) -> None:
        elapsed = (stage.finished or time.time()) - self.t0
        status = {True: "ok", False: "FAILED", None: "..."}[stage.ok]
        print(f"[{elapsed:7.1f}s] {stage.name:<28} {status:<6} {stage.result}", flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        stage = Stage(name, time.time())
        self.stages.append(stage)
        self.print(stage)
        try:
            yield stage
        except BaseException as exc:
            stage.ok, stage.finished = False, time.time()
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            stage.result = stage.result or first[:160]
            self.print(stage)
            raise
        stage.ok, stage.finished = True, time.time()
        self.print(stage)


def wait_for(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise DemoFailed(f"{what} did not happen within {timeout:.0f}s")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def prom_query(prom: Service, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.quote(query)
    result: list[dict[str, Any]] = _get_json(f"{prom.url}/api/v1/query?query={q}")["data"]["result"]
    return result


class LocalPlatform:
    """The local stack: services, rendered chart objects, settings env, gateway."""

    def __init__(
        self, workdir: Path, margin: float | None, values: tuple[Path, ...], tiny: bool = False
    ) -> None:
        from bigbertha.local import chart

        self.tiny = tiny
        self.workdir = workdir
        self.services = ServiceManager(workdir / "run")
        self.token = secrets.token_urlsafe(24)
        overrides: dict[str, Any] = {}
        if margin is not None:
            overrides = {"settings": {"promote": {"margin": margin}}}
        self.objects = chart.render(list(values), overrides, release=RELEASE, namespace=NAMESPACE)
        self.values = chart.load_values([chart.ROOT / "values.yaml", *values], overrides)
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

    def start(self, timeline: Timeline) -> None:
        svc = self.services
        with timeline.stage("start redis, s3, milvus") as st:
            redis = svc.redis(password=secrets.token_urlsafe(12))
            s3 = svc.s3()
            milvus = svc.milvus()
            st.result = f"redis :{redis.port}, s3 :{s3.port}, milvus :{milvus.port}"
        with timeline.stage("start mlflow") as st:
            mlflow = svc.mlflow()
            st.result = mlflow.url
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        exporter_port, chat_port = free_port(), free_port()
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
            "BIGBERTHA_MLFLOW__TRACKING_URI": mlflow.url,
            "BIGBERTHA_EXPORTER__HOST": "127.0.0.1",
            "BIGBERTHA_EXPORTER__PORT": str(exporter_port),
            "BIGBERTHA_CHAT__PORT": str(chat_port),
        }
        self._make_buckets()
        self.env.update(self._datasets())
        if self.tiny:
            self.env.update(self._tiny_model())
        with timeline.stage("start exporter") as st:
            exporter = svc.bigbertha("exporter", ["exporter"], exporter_port, self.env)
            st.result = f"{exporter.url}/metrics"
        with timeline.stage("start gateway") as st:
            gw_url = self._start_gateway()
            st.result = gw_url
        with timeline.stage("start alertmanager") as st:
            am = svc.alertmanager(self.alertmanager_config(gw_url))
            st.result = am.url
        with timeline.stage("start prometheus") as st:
            prom = svc.prometheus(*self.prometheus_config(exporter_port, am.port))
            st.result = prom.url
        with timeline.stage("start chatbot") as st:
            # Ready once its API says the model is loaded (it loads in the background).
            chat = svc.bigbertha(
                "chat", ["chat"], chat_port, self.env, ready_path="/api/status", timeout=180
            )
            status = chatbot_status(chat.url)
            st.result = f"{chat.url} serving model version {status.get('model_version')}"
        self.urls = {
            "chatbot": chat.url,
            "prometheus": prom.url,
            "alertmanager": am.url,
            "mlflow": mlflow.url,
            "exporter": f"{exporter.url}/metrics",
            "gateway": gw_url,
        }
        self.prometheus, self.alertmanager_svc = prom, am

    def _make_buckets(self) -> None:
        from bigbertha.core import storage

        client = storage.open_client(self.settings())
        for bucket in (
            self.values["objectStorage"]["documentsBucket"],
            self.values["objectStorage"]["artifactsBucket"],
        ):
            client.ensure_bucket(bucket)

    def _datasets(self) -> dict[str, str]:
        """Put the curated training and held-out sets where the settings say they live."""
        from bigbertha.core import storage

        settings = self.settings()
        client = storage.open_client(settings)
        wanted = {"train": settings.finetune.data[0], "eval": settings.evaluate.data}
        for name, uri in wanted.items():
            if not uri or not uri.startswith("s3://"):
                raise DemoFailed(f"settings name no s3:// {name} dataset (got {uri!r})")
            bucket, _, key = uri[len("s3://") :].partition("/")
            client.ensure_bucket(bucket)
            data = (DEMO_DATA / f"{name}.jsonl").read_bytes()
            client.put(bucket, key, data, "application/x-ndjson")
        return {}

    def _tiny_model(self) -> dict[str, str]:
        """A tiny Llama built in code as the base model: the loop in CI time, not SmolLM2's."""
        from bigbertha.models import loading as models

        corpus = [
            line
            for name in ("train", "eval")
            for line in (DEMO_DATA / f"{name}.jsonl").read_text().splitlines()
        ]
        base = models.tiny_llama(self.workdir / "tiny-base", corpus)
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
            log = self.workdir / "run" / "workflows.log"
            with log.open("ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode())
                out.flush()
                return subprocess.run(
                    argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
                ).returncode

        self.gateway = gateway.Gateway(self.objects, runner, self.token)
        port = free_port()
        self.gateway_server = create_server(
            self.gateway.flask_app(), host="127.0.0.1", port=port, threads=4
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

    def prometheus_config(self, exporter_port: int, am_port: int) -> tuple[str, dict[str, str]]:
        rules = self.manifest("PrometheusRule")
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
        return yaml.safe_dump(config), {"rules.yml": yaml.safe_dump(rules["spec"])}

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
        if self.gateway_server is not None:
            self.gateway_server.close()
        return self.services.stop_all()


# --- the scenario -----------------------------------------------------------------------------


def upload_and_ingest(platform: LocalPlatform, timeline: Timeline) -> None:
    """Upload the seed documents; MinIO-style notifications go to the gateway's /minio."""
    from bigbertha.core import storage

    bucket = platform.values["objectStorage"]["documentsBucket"]
    client = storage.open_client(platform.settings())
    with timeline.stage("upload + ingest documents") as st:
        for rel in SEED_DOCS:
            path = ROOT / rel
            key = f"seed/{Path(rel).name}"
            client.put(bucket, key, path.read_bytes())
            notification = minio_notification(bucket, key, path.stat().st_size)
            body = json.dumps(notification).encode()
            request = urllib.request.Request(
                f"{platform.urls['gateway']}/minio",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).read()
        if not platform.gateway.wait(600):
            raise DemoFailed("ingestion workflows did not finish")
        runs = [r for r in platform.gateway.engine.runs if "ingest" in r.template]
        failed = [r.name for r in runs if r.status != "Succeeded"]
        if failed:
            raise DemoFailed(f"ingestion failed: {failed}")
        st.result = f"{len(runs)} documents through {len(runs)} ingest workflows"


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


def chatbot_status(url: str) -> dict[str, Any]:
    """The running chatbot's /api/status (a 503 while loading is a status too)."""
    try:
        status: dict[str, Any] = _get_json(f"{url}/api/status")
    except urllib.error.HTTPError as exc:
        status = json.load(exc)
    return status


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


@dataclass
class Round:
    """One turn of the quality loop: unhappy users, alert, retraining, gate."""

    number: int
    margin: float
    served_before: str = ""
    workflow: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)
    champion_after: str | None = None
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return bool(self.champion_after) and self.champion_after != self.served_before


def quality_round(platform: LocalPlatform, timeline: Timeline, rnd: Round) -> Round:
    """Rate answers down until the retrain alert fires; follow the Workflow to the gate."""
    from bigbertha.models import registry

    tag = f"round {rnd.number}: "
    platform.env["BIGBERTHA_PROMOTE__MARGIN"] = str(rnd.margin)  # read by the workflow steps
    known = {r.name for r in platform.gateway.engine.runs if "finetune" in r.template}
    with timeline.stage(tag + "questions, rated down") as st:
        versions = {str(ask(platform, q, feedback="down").get("model_version")) for q in QUESTIONS}
        if len(versions) != 1:
            raise DemoFailed(f"answers came from several model versions: {sorted(versions)}")
        rnd.served_before = versions.pop()
        st.result = f"{len(QUESTIONS)} answers from version {rnd.served_before}, all rated down"
    with timeline.stage(tag + "retrain alert fires") as st:
        query = (
            'ALERTS{alertname="BigBerthaNegativeFeedbackHigh",alertstate="firing",'
            f'model_version="{rnd.served_before}"}}'
        )
        wait_for("the retrain alert", lambda: prom_query(platform.prometheus, query), 300, 2)
        st.result = f"BigBerthaNegativeFeedbackHigh firing for version {rnd.served_before}"
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
        wait_for("the retraining workflow", lambda: run.finished, 1200, 2)
        rnd.marks["retrain_started"] = run.started
        rnd.marks["retrain_finished"] = run.finished
        steps = ", ".join(
            f"{s['name']} {s.get('finished', s['started']) - s['started']:.0f}s" for s in run.steps
        )
        st.result = f"{run.status}: {steps}"
        if run.status != "Succeeded":
            raise DemoFailed(f"retraining failed: {run.message}")
    with timeline.stage(tag + "promotion gate") as st:
        settings = platform.settings()
        rnd.champion_after = registry.alias_version(settings, "champion")
        rnd.outcome = last_decision(settings)
        if rnd.promoted:
            rnd.marks["promoted"] = time.time()
        st.result = (
            f"{rnd.outcome.get('decision', '?')}: champion {rnd.served_before} -> "
            f"{rnd.champion_after} ({rnd.outcome.get('reason', '')})"
        )
    timeline.data.setdefault("rounds", []).append(rnd)
    return rnd


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
        if len(parts) == 3 and parts[0] == "gate" and parts[2] in ("champion", "challenger"):
            metrics.setdefault(parts[1], {})[parts[2]] = value
    return {
        "version": str(newest.version),
        "decision": tags.get("gate.decision", "none"),
        "reason": tags.get("gate.reason", ""),
        "metrics": metrics,
    }


def champion_answers(platform: LocalPlatform, timeline: Timeline, expected: str) -> None:
    """The running chatbot hot-swapped to the champion (no restart): its status says so, and
    its next answer reports the champion's version."""
    url = platform.urls["chatbot"]
    with timeline.stage("chatbot serves the champion") as st:
        status = wait_for(
            f"the chatbot's hot swap to version {expected}",
            lambda: (s := chatbot_status(url)).get("model_version") == expected and s,
            180,
            1,
        )
        answer = ask(platform, QUESTIONS[0])
        served = str(answer.get("model_version"))
        if served != expected:
            raise DemoFailed(f"answer came from {served}, expected champion {expected}")
        st.result = (
            f"chatbot hot-swapped to model version {expected} (swaps {status['swaps']}); "
            f"next answer from model version {served}"
        )


# --- the report -------------------------------------------------------------------------------


def write_report(platform: LocalPlatform | None, timeline: Timeline, path: Path) -> Path:
    """report.html: the decisions and their numbers, the timeline, and a plot of the loop."""
    plot = ""
    if platform is not None and getattr(platform, "prometheus", None) is not None:
        plot = _plot(platform, timeline)
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.started - timeline.t0:.1f}s</td>"
        f"<td>{((s.finished or s.started) - s.started):.1f}s</td>"
        f"<td>{'ok' if s.ok else 'FAILED'}</td><td>{esc(s.result)}</td></tr>"
        for s in timeline.stages
    )
    decisions = ""
    for rnd in timeline.data.get("rounds", []):
        outcome = rnd.outcome
        metric_rows = "".join(
            f"<tr><td>{esc(str(name))}</td><td>{esc(str(v.get('champion')))}</td>"
            f"<td>{esc(str(v.get('challenger')))}</td></tr>"
            for name, v in (outcome.get("metrics") or {}).items()
        )
        decisions += (
            f"<h3>Round {rnd.number} (margin {rnd.margin:g}): "
            f"<b>{esc(str(outcome.get('decision', 'none')))}</b></h3>"
            f"<p>Workflow {esc(rnd.workflow)}; version {esc(str(outcome.get('version')))}; "
            f"champion {esc(rnd.served_before)} &rarr; {esc(str(rnd.champion_after))}. "
            f"Why: {esc(str(outcome.get('reason', '')))}</p>"
            "<table><tr><th>gate metric</th><th>champion (or base)</th><th>challenger</th></tr>"
            f"{metric_rows}</table>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>BigBertha demo</title>
<style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>BigBertha demo report</h1>
<h2>Promotion decisions</h2>{decisions or "<p>No retraining happened.</p>"}
<h2>Timeline</h2><table><tr><th>stage</th><th>at</th><th>took</th><th></th><th>result</th></tr>
{rows}</table><h2>Feedback, alert, retraining and promotion</h2>{plot}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _plot(platform: LocalPlatform, timeline: Timeline) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prom = platform.prometheus
    start, end = timeline.t0, time.time()

    def series(query: str) -> list[tuple[float, float]]:
        q = urllib.parse.quote(query)
        url = f"{prom.url}/api/v1/query_range?query={q}&start={start}&end={end}&step=2"
        result = _get_json(url)["data"]["result"]
        return [(float(t) - start, float(v)) for t, v in result[0]["values"]] if result else []

    ratio = series(
        'sum(bigbertha_feedback_total{rating="down"}) / clamp_min(sum(bigbertha_feedback_total), 1)'
    )
    alert = series('max(ALERTS{alertname="BigBerthaNegativeFeedbackHigh",alertstate="firing"})')
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if ratio:
        ax.plot(*zip(*ratio, strict=True), label="negative feedback ratio")
    for i, (t, _value) in enumerate(alert):
        # ALERTS has samples only while firing: shade each sampled step.
        label = "retrain alert firing" if not i else None
        ax.axvspan(t, t + 2, color="orange", alpha=0.3, label=label)
    styles = {"retrain_started": "--", "retrain_finished": ":", "promoted": "-"}
    for rnd in timeline.data.get("rounds", []):
        for mark, at in rnd.marks.items():
            label = mark if rnd.number == 1 or mark == "promoted" else None
            ax.axvline(at - start, linestyle=styles[mark], color="gray", label=label)
    ax.set_xlabel("seconds since start")
    ax.set_ylim(-0.05, 1.1)
    ax.legend(loc="lower right", fontsize="small")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="timeline plot" src="data:image/png;base64,{encoded}">'


# --- entry point ------------------------------------------------------------------------------


def run(
    workdir: Path,
    keep: bool = False,
    margin: float | None = None,
    tiny: bool = False,
    challenge_again: float | None = None,
) -> int:
    """Run the scenario. Exit code: 0 when the champion moved (and, with `challenge_again`,
    the second challenger was kept out), 4 when the gate kept the champion, 130 on Ctrl-C,
    1 on failure."""
    timeline = Timeline()
    platform: LocalPlatform | None = None
    report = workdir / "report.html"
    code = 1

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        platform = LocalPlatform(workdir, margin, VALUES, tiny=tiny)
        platform.start(timeline)
        for name, url in platform.urls.items():
            print(f"  {name:<13} {url}", flush=True)
        upload_and_ingest(platform, timeline)
        gate_margin = float(platform.settings().promote.margin)
        first = quality_round(platform, timeline, Round(1, gate_margin))
        if first.promoted:
            champion_answers(platform, timeline, str(first.champion_after))
            code = 0
            if challenge_again is not None:
                second = quality_round(platform, timeline, Round(2, challenge_again))
                if second.promoted:
                    raise DemoFailed(f"margin {challenge_again:g} still promoted a challenger")
                print(f"champion kept: {second.outcome.get('reason', '')}", flush=True)
                champion_answers(platform, timeline, str(first.champion_after))
        else:
            print(f"champion kept: {first.outcome.get('reason', '')}", flush=True)
            code = 4
        write_report(platform, timeline, report)
        print(f"report: {report}", flush=True)
        if keep:
            print("stack running; Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
        code = 130
    except BigberthaError as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave orphans behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if platform is not None:
            if code == 1:
                write_report(platform, timeline, report)
            left = platform.stop()
            if left:
                print(f"processes still running: {left}", file=sys.stderr)
                code = code or 1
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code
