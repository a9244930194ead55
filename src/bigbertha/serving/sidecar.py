"""`bigbertha serve-adapters`: the sidecar container of each vLLM pod.

    bigbertha serve-adapters          # until SIGTERM

It runs `adapters.AdapterSync` every `serving.poll_seconds` (every 2 s until vLLM has answered
once, so adapters follow a starting server closely) and serves on `serving.status_port`:

- ``GET /healthz``: 200 while the sync loop runs (the container's liveness);
- ``GET /readyz``: 200 once a pass reached vLLM, so a new pod joins the Service with the aliased
  adapters loaded (a registry outage does not hold it back: it serves the base meanwhile);
- ``GET /status``: the last pass as JSON (aliases, loaded names, skipped and failed versions);
- ``GET /metrics``: vLLM's own /metrics relayed from localhost. Prometheus scrapes this port, so
  only the chatbot needs vLLM's port, whose unauthenticated adapter routes (SageMaker's /adapters
  in vLLM 0.33.0) must not be reachable from anywhere else.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import BigberthaError, ConfigError
from bigbertha.models import registry
from bigbertha.serving import rollout
from bigbertha.serving.adapters import AdapterSync, SyncReport
from bigbertha.serving.vllm import VllmClient, VllmUnavailable

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)
_STARTING_POLL = 2.0


class Sidecar:
    """The sync loop and its state, shared with the status server's threads."""

    def __init__(self, settings: Settings, sync: AdapterSync) -> None:
        self.settings = settings
        self.sync = sync
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.last: SyncReport | None = None
        self.last_error: str | None = None
        self.passes = 0
        self.failures = 0

    def run_once(self) -> None:
        try:
            report = self.sync.sync_once()
        except VllmUnavailable as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.info("vLLM not answering yet: %s", exc)
            return
        except BigberthaError as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.warning("adapter sync failed, nothing changed: %s", exc)
            if not isinstance(exc, ConfigError) and self.sync.vllm.healthy():
                self.ready.set()  # the registry is down: serve what is loaded meanwhile
            return
        self.passes += 1
        self.last, self.last_error = report, None
        self.ready.set()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception:  # the loop must outlive any single bad pass
                log.exception("adapter sync pass failed")
            poll = self.settings.serving.poll_seconds
            self.stop.wait(poll if self.ready.is_set() else min(poll, _STARTING_POLL))

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready.is_set(),
            "passes": self.passes,
            "failures": self.failures,
            "last_error": self.last_error,
            "last": self.last.to_json() if self.last else None,
        }


def _handler(sidecar: Sidecar) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                ready = sidecar.ready.is_set()
                self._send(200 if ready else 503, b"ready\n" if ready else b"syncing\n")
            elif path == "/status":
                body = json.dumps(sidecar.status(), default=str).encode()
                self._send(200, body, "application/json")
            elif path == "/metrics":
                try:
                    body, content_type = sidecar.sync.vllm.metrics()
                except BigberthaError as exc:
                    self._send(503, f"{exc}\n".encode())
                    return
                self._send(200, body, content_type)
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
            return

    return Handler


def build(settings: Settings) -> Sidecar:
    """The sidecar for these settings: vLLM client, and a roll only where a Deployment is named."""
    registry.limit_retries()  # a poll must not hang for minutes on an unreachable MLflow
    s = settings.serving
    api_key = s.api_key.get_secret_value() if s.api_key else None
    vllm = VllmClient(s.url, api_key=api_key, timeout=s.load_timeout_seconds)
    roll: Callable[[str], bool] | None = None
    if s.deployment and s.namespace:
        api = rollout.KubeApi.in_cluster()
        deployment, namespace = s.deployment, s.namespace

        def roll_deployment(ref: str) -> bool:
            return rollout.roll(api, namespace, deployment, ref)

        roll = roll_deployment
    return Sidecar(settings, AdapterSync(settings, vllm, roll=roll))


def serve(settings: Settings, *, host: str = "0.0.0.0") -> None:
    """Run the sync loop and the status server until SIGTERM or SIGINT."""
    sidecar = build(settings)
    server = ThreadingHTTPServer((host, settings.serving.status_port), _handler(sidecar))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bigbertha-status", daemon=True)
    thread.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sidecar.stop.set())
    log.info(
        "serving adapters of %s to %s every %.0fs (status on :%d)",
        settings.mlflow.model_name,
        settings.serving.url,
        settings.serving.poll_seconds,
        settings.serving.status_port,
    )
    try:
        sidecar.loop()
    finally:
        server.shutdown()
        sidecar.sync.vllm.close()
