"""`bigbertha demo`: both loops of the platform on one machine, as real processes.

    bigbertha demo [--keep] [--margin M] [--workdir .bigbertha/demo]

Starts redis-server, an S3 server (moto, reached through the MinIO client like MinIO), a
milvus-lite server, an MLflow server (sqlite), the exporter, Prometheus with the rules the
chart renders from values/local.yaml + values/demo.yaml, Alertmanager routing retrain alerts
(bearer token) to the local event gateway, and the chatbot (UI and JSON API). Then runs the
scenario: seed documents uploaded and ingested through the gateway while MLflow and the
chatbot's model load, questions asked with `bigbertha ask --server` through the running
chatbot, negative ratings, the retrain alert firing, fine-tune, evaluate, the offline gate, a
live canary in which scripted raters vote on the challenger's and the champion's answers
(local/canary.py) until the canary step promotes or retires the challenger, the chatbot
hot-swapping to the new champion and answering the same questions again. Prints a live
timeline, writes `<workdir>/report.html` and ends with its path and one line per round. With
--keep the stack stays up (its URLs printed) until Ctrl-C. Every process is stopped on exit.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from bigbertha.core.errors import BigberthaError, ExitCode, Interrupted
from bigbertha.local.canary import Side
from bigbertha.local.platform import VALUES, LocalPlatform
from bigbertha.local.report import write_report
from bigbertha.local.scenario import (
    Round,
    champion_answers,
    quality_round,
    upload_documents,
    wait_ingested,
)
from bigbertha.local.timeline import DemoFailed, Timeline


def scenario(
    platform: LocalPlatform,
    timeline: Timeline,
    challenge_again: float | None,
    raters: Side = "challenger",
) -> list[Round]:
    """Start the platform and play the rounds; returns them (the first decides the exit code).
    `raters`: which side round 1's canary raters prefer."""
    platform.start(timeline)
    # Ingestion, MLflow's start and the chatbot's model load overlap: none needs the others.
    ingesting = upload_documents(platform, timeline)
    chatbot = platform.start_chatbot(timeline)
    wait_ingested(platform, timeline, ingesting)
    platform.chatbot_ready(timeline, chatbot)

    gate_margin = float(platform.settings().promote.margin)
    rounds = [quality_round(platform, timeline, Round(1, gate_margin), raters)]
    if rounds[0].promoted:
        champion_answers(platform, timeline, rounds[0])
        if challenge_again is not None:
            second = quality_round(platform, timeline, Round(2, challenge_again))
            rounds.append(second)
            if second.promoted:
                raise DemoFailed(f"margin {challenge_again:g} still promoted a challenger")
            champion_answers(platform, timeline, second, all_questions=False)
    return rounds


def run(
    workdir: Path,
    keep: bool = False,
    margin: float | None = None,
    tiny: bool = False,
    challenge_again: float | None = None,
    raters: Side = "challenger",
) -> int:
    """Run the scenario. Exit code: 0 when the champion moved (and, with `challenge_again`,
    the second challenger was kept out), 4 (KEPT) when the gate or the live canary kept the
    champion (`raters`: which side the canary's scripted users prefer), 130 on Ctrl-C and 143 on
    SIGTERM before the end (with --keep, either after it exits with the scenario's code); a
    failure exits with its class's code (`bigbertha.core.errors`)."""
    timeline = Timeline()
    platform: LocalPlatform | None = None
    report = workdir / "report.html"
    code = int(ExitCode.BUG)  # until the scenario says otherwise
    finished = False
    stopped_by = signal.SIGINT  # KeyboardInterrupt: Ctrl-C, unless on_signal says otherwise

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopped_by
        stopped_by = signal.Signals(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job of
    # a non-interactive shell inherits that, and Python then installs no handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        platform = LocalPlatform(workdir, margin, VALUES, tiny=tiny)
        rounds = scenario(platform, timeline, challenge_again, raters)
        code = int(ExitCode.OK if rounds[0].promoted else ExitCode.KEPT)
        finished = True
        write_report(platform, timeline, report)
        print(f"report: {report}", flush=True)
        for rnd in rounds:
            print(rnd.summary(), flush=True)
        if keep:
            for name, url in platform.urls.items():
                print(f"  {name:<13} {url}", flush=True)
            print("stack running; Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
        # 128 + the signal, as a shell reports it and as every job exits (core/interrupts.py).
        code = code if finished else int(Interrupted(stopped_by).exit_code)
    except BigberthaError as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        code = int(exc.exit_code)
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave orphans behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if platform is not None:
            if not finished and platform.claimed:  # a failed run's report says where it stopped
                write_report(platform, timeline, report)
                print(f"report: {report}", flush=True)
            left = platform.stop()
            if left:
                print(f"processes still running: {left}", file=sys.stderr)
                code = code or int(ExitCode.BUG)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code
