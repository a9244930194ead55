"""Real local services on 127.0.0.1: started on free ports, supervised, stopped by PID.

`ServiceManager` launches one real process per service (redis-server, prometheus, alertmanager,
a moto S3 server standing in for MinIO, an MLflow server, a milvus-lite server, and any
`bigbertha` subcommand), waits until it answers, and remembers every PID it started so that
`stop_all` can prove none is left running. `bigbertha demo` and the test suite share it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bigbertha.core.errors import ServiceUnavailable

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, *alternatives: str) -> str:
    """Path of a binary on PATH or beside this interpreter (the venv's console scripts)."""
    for candidate in (name, *alternatives):
        if path := shutil.which(candidate):
            return path
        if (VENV_BIN / candidate).exists():
            return str(VENV_BIN / candidate)
    raise ServiceUnavailable(f"{name} is not installed (make setup installs it)")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes once reaped; check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    Around starting a process and recording its PID: an interrupt between the two would leave
    a process nobody stops. Only the main thread receives signals, so elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _deliver(list(dict.fromkeys(held)))


def _deliver(signums: list[int]) -> None:
    """Raise each signal, even when a handler before it raises (KeyboardInterrupt)."""
    if signums:
        try:
            signal.raise_signal(signums[0])
        finally:
            _deliver(signums[1:])


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a process group (a process started in its own session), then SIGKILL what is
    left; reap the leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    # Children in the group (mlflow's server workers) go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Service:
    """A running service process, and how to tell that it answers."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)
    probe: Callable[[], bool] | None = None  # True once it answers
    ready_timeout: float = 60.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> Service:
        """Block until the probe answers; ServiceUnavailable (and the service stopped) if the
        process exits or does not answer within `ready_timeout`."""
        if self.probe is not None:
            wait_until(self.probe, self, self.ready_timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left; reap it."""
        stop_group(self.process, timeout)


def wait_until(check: Callable[[], bool], service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise ServiceUnavailable(
                f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    service.stop()
    raise ServiceUnavailable(
        f"{service.name} did not become ready in {timeout}s:\n{service.log_tail()}"
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


class ServiceManager:
    """Starts services under one base directory and records every PID it launched.

    The base is made absolute here: each service runs in its own working directory below it,
    so every path it is handed must not depend on the caller's. Every start method waits until
    the service answers; with `wait=False` it returns at once and `Service.wait_ready()` waits
    later, so slow starters (MLflow, the chatbot's model) overlap with other work.
    """

    def __init__(self, base: Path, which: Callable[..., str] = find_binary) -> None:
        self.base = Path(base).expanduser().absolute()
        self.which = which
        self.started: list[Service] = []

    def _workdir(self, name: str, port: int) -> Path:
        workdir = self.base / f"{name}-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    def _launch(
        self,
        name: str,
        argv: list[str],
        port: int,
        *,
        probe: Callable[[], bool],
        timeout: float,
        wait: bool,
        env: dict[str, str] | None = None,
    ) -> Service:
        workdir = self._workdir(name, port)
        log_path = workdir / "service.log"
        with log_path.open("wb") as log, signals_held():
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group, so stop() gets the children
            )
            service = Service(
                name, process, port, workdir, log_path, probe=probe, ready_timeout=timeout
            )
            self.started.append(service)
        return service.wait_ready() if wait else service

    def redis(self, password: str | None = None, *, wait: bool = True) -> Service:
        binary = self.which("redis-server")
        port = free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if password:
            argv += ["--requirepass", password]
        service = self._launch(
            "redis", argv, port, probe=lambda: port_open(port), timeout=30, wait=wait
        )
        auth = f":{password}@" if password else ""
        service.extra["url"] = f"redis://{auth}127.0.0.1:{port}/0"
        return service

    def _configured(
        self,
        name: str,
        binary: str,
        files: dict[str, str],
        flags: list[str],
        *,
        wait: bool,
    ) -> Service:
        """Prometheus or Alertmanager: config files written into the service's directory,
        the first one passed as --config.file, `flags` ({dir} is that directory)."""
        port = free_port()
        workdir = self._workdir(name, port)
        for filename, text in files.items():
            (workdir / filename).write_text(text)
        argv = [
            binary,
            f"--config.file={workdir / next(iter(files))}",
            f"--web.listen-address=127.0.0.1:{port}",
            *(flag.format(dir=workdir) for flag in flags),
        ]
        ready = f"http://127.0.0.1:{port}/-/ready"
        return self._launch(name, argv, port, probe=lambda: http_ok(ready), timeout=60, wait=wait)

    def prometheus(
        self, config: str, rule_files: dict[str, str] | None = None, *, wait: bool = True
    ) -> Service:
        """`config` is prometheus.yml text; rule files are written beside it by name."""
        return self._configured(
            "prometheus",
            self.which("prometheus"),
            {"prometheus.yml": config, **(rule_files or {})},
            ["--storage.tsdb.path={dir}/data", "--web.enable-lifecycle"],
            wait=wait,
        )

    def alertmanager(self, config: str, *, wait: bool = True) -> Service:
        return self._configured(
            "alertmanager",
            self.which("prometheus-alertmanager", "alertmanager"),
            {"alertmanager.yml": config},
            # A single node: no gossip port to bind or to clash with a parallel run.
            ["--storage.path={dir}/data", "--cluster.listen-address="],
            wait=wait,
        )

    def s3(self, *, wait: bool = True) -> Service:
        binary = self.which("moto_server")
        port = free_port()
        ready = f"http://127.0.0.1:{port}/moto-api/"
        service = self._launch(
            "s3",
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            port,
            probe=lambda: http_ok(ready),
            timeout=60,
            wait=wait,
        )
        service.extra.update(
            endpoint=f"127.0.0.1:{port}", access_key="testing", secret_key="testing-secret"
        )
        return service

    def mlflow(
        self,
        artifacts_destination: str | None = None,
        env: dict[str, str] | None = None,
        *,
        wait: bool = True,
    ) -> Service:
        """An MLflow server proxying artifacts (as the chart's is) to a local directory, or to
        `artifacts_destination` (e.g. s3://bucket/prefix with MLFLOW_S3_ENDPOINT_URL and AWS_*
        credentials in `env`)."""
        binary = self.which("mlflow")
        port = free_port()
        workdir = self._workdir("mlflow", port)
        argv = [
            binary,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts_destination or str(workdir / "artifacts"),
            "--workers",
            "1",
            # Longer than any client's poll (the demo's chatbot asks every 5 s): at uvicorn's
            # default of 5 s the server closed the connection a poll was being sent on.
            "--uvicorn-opts",
            "--timeout-keep-alive 60",
        ]
        ready = f"http://127.0.0.1:{port}/health"
        # No GenAI job runner: it only costs start-up time and worker processes here.
        return self._launch(
            "mlflow",
            argv,
            port,
            probe=lambda: http_ok(ready),
            timeout=120,
            wait=wait,
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        )

    def milvus(self, *, wait: bool = True) -> Service:
        """milvus-lite's server with a real Milvus's keepalive policy (bigbertha.local.milvus)."""
        self.which("milvus-lite")  # the package is installed (else a clear error)
        port = free_port()
        workdir = self._workdir("milvus", port)
        argv = [
            sys.executable,
            "-m",
            "bigbertha.local.milvus",
            "--data-dir",
            str(workdir / "data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        service = self._launch(
            "milvus", argv, port, probe=lambda: port_open(port), timeout=60, wait=wait
        )
        service.extra["uri"] = f"http://127.0.0.1:{port}"
        return service

    def bigbertha(
        self,
        name: str,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        ready_path: str = "/healthz",
        timeout: float = 120.0,
        *,
        wait: bool = True,
    ) -> Service:
        """Run a `bigbertha` subcommand as a service, ready once `ready_path` answers 200."""
        binary = self.which("bigbertha")
        ready = f"http://127.0.0.1:{port}{ready_path}"
        return self._launch(
            name,
            [binary, *args],
            port,
            probe=lambda: http_ok(ready),
            timeout=timeout,
            wait=wait,
            env=env,
        )

    def stop_all(self) -> list[int]:
        """Stop every service; return the PIDs still alive afterwards (should be none)."""
        for service in reversed(self.started):
            service.stop()
        return [s.pid for s in self.started if pid_alive(s.pid)]
