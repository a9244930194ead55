"""The demo's live timeline (what the terminal prints and the report is built from), and the
waits and Prometheus queries its stages share."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bigbertha.core.errors import ServiceUnavailable
from bigbertha.local.stack import Service


class DemoFailed(ServiceUnavailable):
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

    def begin(self, name: str) -> Stage:
        """Start a stage that finishes later, while others run (`stage(it)` finishes it)."""
        stage = Stage(name, time.time())
        self.stages.append(stage)
        self.print(stage)
        return stage

    @contextmanager
    def stage(self, which: str | Stage, *, finish: bool = True) -> Iterator[Stage]:
        """Run a stage (a name starts one; a Stage from `begin` resumes it). An exception marks
        it failed; with `finish=False` it stays open for a later `stage(it)`."""
        stage = which if isinstance(which, Stage) else self.begin(which)
        try:
            yield stage
        except BaseException as exc:
            stage.ok, stage.finished = False, time.time()
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            stage.result = stage.result or first[:160]
            self.print(stage)
            raise
        if finish:
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


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def prom_query(prom: Service, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.quote(query)
    result: list[dict[str, Any]] = get_json(f"{prom.url}/api/v1/query?query={q}")["data"]["result"]
    return result
