"""The ingestion report (every source's outcome, totals, the exit code) and its progress."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

from bigbertha.core.errors import ExitCode
from bigbertha.documents.sources import Action


@dataclass
class Outcome:
    """What happened to one source."""

    source: str
    status: Literal["ingested", "unchanged", "deleted", "rejected", "skipped"]
    chunks: int = 0
    added: int = 0
    removed: int = 0
    reason: str | None = None
    dead_letter: str | None = None


@dataclass
class Report:
    """The JSON report: every source's outcome, the rejected ones listed again, and totals."""

    action: Action
    event_name: str | None
    started: float = field(default_factory=time.time)
    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None
    fatal_code: ExitCode = ExitCode.UNAVAILABLE  # the fatal error's class, when there is one
    finished: float | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal:
            return int(self.fatal_code)
        rejected = any(o.status == "rejected" for o in self.outcomes)
        return int(ExitCode.INPUT if rejected else ExitCode.OK)

    def to_dict(self) -> dict[str, Any]:
        totals: dict[str, int] = {"sources": len(self.outcomes)}
        for status in ("ingested", "unchanged", "deleted", "rejected", "skipped"):
            totals[status] = sum(o.status == status for o in self.outcomes)
        totals["chunks_added"] = sum(o.added for o in self.outcomes)
        totals["chunks_removed"] = sum(o.removed for o in self.outcomes)
        return {
            "action": self.action,
            "event_name": self.event_name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "duration_s": round((self.finished or time.time()) - self.started, 3),
            "exit_code": self.exit_code,
            "fatal": self.fatal,
            "totals": totals,
            "rejected": [
                {"source": o.source, "reason": o.reason, "dead_letter": o.dead_letter}
                for o in self.outcomes
                if o.status == "rejected"
            ],
            "results": [asdict(o) for o in self.outcomes],
        }

    def summary(self) -> str:
        t = self.to_dict()["totals"]
        return (
            f"{self.action}: {t['sources']} sources: {t['ingested']} ingested, "
            f"{t['unchanged']} unchanged, {t['deleted']} deleted, {t['rejected']} rejected, "
            f"{t['skipped']} skipped; chunks +{t['chunks_added']} -{t['chunks_removed']}"
        )


class Progress:
    """A progress bar on a terminal, one JSON line per finished source otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done = total, 0
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="doc", file=self.stream, dynamic_ncols=True)

    def update(self, outcome: Outcome) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(outcome.status, refresh=False)
            self.bar.update(1)
            return
        line = {"progress": {"done": self.done, "total": self.total, **_brief(outcome)}}
        self.stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _brief(outcome: Outcome) -> dict[str, Any]:
    return {k: v for k, v in asdict(outcome).items() if v not in (None, 0) or k == "status"}
