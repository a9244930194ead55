"""Benchmark: the chat API under a burst bigger than its answer queue.

    .venv/bin/python bench/overload.py [--clients 50] [--answer-seconds 0.5] [--slots 2]
        [--queue 8] [--quick]

Serves the real /api/ask routes (chat/api.py with chat/limits.py) on uvicorn over a socket,
with its own redis-server for the refusal counter, and a stand-in model that takes
`--answer-seconds` per answer (the answering path is measured by bench/chat.py; this one
measures what happens around it). `--clients` questions are sent at once. Reports how many were
served and refused, their latencies, and the ratio of the slowest refusal to one answer's time
(a refusal must not wait for answers: aim well below 1). The last line printed is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bigbertha.chat import api as chat_api
from bigbertha.chat import limits
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.rag import RagEngine
from bigbertha.core.settings import Settings
from bigbertha.documents.retrieval import Chunk
from bigbertha.local.stack import ServiceManager, free_port
from bigbertha.telemetry.feedback import FeedbackLog
from bigbertha.telemetry.recorder import Recorder


class _Tokens:
    prompt_tokens, completion_tokens = 10, 2

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __iter__(self) -> Iterator[str]:
        time.sleep(self.seconds)
        yield "An answer [1]."

    def close(self) -> None:
        pass


def run(clients: int, answer_seconds: float, slots: int, queue: int) -> dict[str, Any]:
    import uvicorn
    from starlette.applications import Starlette

    class Model:
        def __init__(self, ref: str) -> None:
            self.ref = self.version = ref

        def stream(self, messages: Sequence[Any], **_: Any) -> _Tokens:
            return _Tokens(answer_seconds)

    class Retriever:
        def retrieve(self, question: str) -> list[Any]:
            return [Chunk(text="A passage.", score=0.9, source="s3://docs/a.md", file_name="a.md")]

    services = ServiceManager(Path(tempfile.mkdtemp(prefix="bench-overload-")))
    redis = services.redis()
    settings = Settings(
        redis={"url": redis.extra["url"]},
        llm={"model": "stand-in"},
        chat={
            "champion_alias": "",
            "max_concurrent_answers": slots,
            "max_queued_answers": queue,
            # One load generator, one address: measure the queue's bound, not per-client fairness.
            "max_answers_per_client": slots + queue,
        },
    )

    def build(s: Settings) -> RagEngine:
        return RagEngine(
            s,
            retriever=Retriever(),  # type: ignore[arg-type]
            models=ModelServer(Model, fallback_ref="stand-in").start(),
            recorder=Recorder.from_settings(s),
            feedback=FeedbackLog.from_settings(s),
        )

    slot = chat_api.EngineSlot(settings, build)
    slot.start().join(30)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=chat_api.routes(slot)),
            host="127.0.0.1",
            port=port,
            http=limits.protocol_class(settings.chat.request_timeout_seconds),
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def ask(n: int) -> tuple[int, float, str | None]:
        body = json.dumps({"question": f"question {n}"}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/ask", data=body, headers={"Content-Type": "json"}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                response.read()
                return response.status, time.perf_counter() - started, None
        except urllib.error.HTTPError as exc:
            return exc.code, time.perf_counter() - started, exc.headers.get("Retry-After")

    try:
        barrier = threading.Barrier(clients)

        def at_once(n: int) -> tuple[int, float, str | None]:
            barrier.wait(30)
            return ask(n)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(at_once, range(clients)))
        wall = time.perf_counter() - started
    finally:
        server.should_exit = True
        thread.join(10)
        slot.stop()
        services.stop_all()

    served = sorted(t for code, t, _ in results if code == 200)
    refused = sorted(t for code, t, _ in results if code == 503)
    other = sorted({code for code, _, _ in results} - {200, 503})
    retry_after = sorted({int(r) for code, _, r in results if code == 503 and r})

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))], 4)

    return {
        "clients": clients,
        "slots": slots,
        "queue": queue,
        "answer_seconds": answer_seconds,
        "served": len(served),
        "refused_503": len(refused),
        "other_statuses": other,
        "retry_after_seconds": retry_after,
        "served_p50_s": pct(served, 50),
        "served_max_s": pct(served, 100),
        "refused_p50_s": pct(refused, 50),
        "refused_p95_s": pct(refused, 95),
        "refused_max_s": pct(refused, 100),
        "wall_s": round(wall, 3),
        "refused_max_over_answer": (
            round(refused[-1] / answer_seconds, 4) if refused and answer_seconds else None
        ),
        "served_mean_s": round(statistics.fmean(served), 4) if served else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--answer-seconds", type=float, default=0.5)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args(argv)
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(clients=12, answer_seconds=0.2, queue=4)
        args = parser.parse_args(argv)
    result = run(args.clients, args.answer_seconds, args.slots, args.queue)
    print(
        f"{result['served']} served, {result['refused_503']} refused (503 + Retry-After "
        f"{result['retry_after_seconds']}); slowest refusal {result['refused_max_s']} s, "
        f"slowest answer {result['served_max_s']} s"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
