"""Benchmark the chatbot pod's memory with the model in process and with the inference tier.

    .venv/bin/python bench/chat_memory.py [--answers 3] [--quick]

Runs the real chatbot server (`bigbertha chat`: Streamlit, its JSON API, the RAG engine over a
milvus-lite collection holding a handbook) twice, and asks it `--answers` questions through
/api/ask each time:

1. `in_process`: the transformers backend with SmolLM2-135M (what values/dev.yaml and local run);
2. `tier`: the OpenAI backend against an OpenAI-compatible server in another process (the stand-in
   for vLLM 0.33.0 the tests use, tests/serving/fake_vllm.py), as values/prod.yaml runs it.

After the answers it reads the chatbot process's resident memory (VmRSS) and peak (VmHWM) from
/proc. A 7B model cannot load on this machine, so the in-process figure is SmolLM2's; a 7B model
in bf16 adds about 13.5 GB of weights to it (the chatbot's old 12 GiB limit could not hold it).
The last line printed is one JSON object with every figure and the ratio tier / in_process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.chat.helpers import HANDBOOK, MASCOT  # noqa: E402
from tests.serving.fake_vllm import FakeVllm  # noqa: E402

QUESTIONS = [MASCOT, "How long do refunds take?", "Who replaces lost badges?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 300) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def run_chatbot(env: dict[str, str], workdir: Path, answers: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, **env, "BIGBERTHA_CHAT__PORT": str(port)}
    log = (workdir / f"chat-{port}.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "bigbertha"), "chat", "--host", "127.0.0.1"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        deadline = started + 600
        while time.monotonic() < deadline:
            try:
                if get_json(f"http://127.0.0.1:{port}/api/status", timeout=5).get("ready"):
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"bigbertha chat exited: see {log.name}")
            time.sleep(1)
        ready_s = time.monotonic() - started
        versions = []
        for question in (QUESTIONS * answers)[:answers]:
            answer = get_json(f"http://127.0.0.1:{port}/api/ask", {"question": question})
            versions.append(answer["model_version"])
        memory = memory_kib(proc.pid)
        return {
            "rss_mib": round(memory["VmRSS"] / 1024, 1),
            "peak_mib": round(memory["VmHWM"] / 1024, 1),
            "ready_s": round(ready_s, 1),
            "model_version": versions[-1],
        }
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small inputs, seconds (CI runs it)")
    args = parser.parse_args()
    if args.quick:  # explicit flags still win over the quick defaults
        parser.set_defaults(answers=1)
        args = parser.parse_args()

    from bigbertha.core.settings import Settings
    from bigbertha.documents import ingest

    with tempfile.TemporaryDirectory(prefix="bigbertha-bench-memory-") as tmp:
        workdir = Path(tmp)
        (workdir / "handbook.md").write_text(HANDBOOK)
        milvus = str(workdir / "milvus.db")
        common = {
            "BIGBERTHA_MILVUS__URI": milvus,
            "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
            "BIGBERTHA_LLM__MAX_NEW_TOKENS": "32",
            "BIGBERTHA_HOME": str(workdir / "home"),
        }
        ingest.run(Settings(milvus={"uri": milvus}), [str(workdir / "handbook.md")])
        in_process = run_chatbot(
            {**common, "BIGBERTHA_LLM__BACKEND": "transformers", "BIGBERTHA_LLM__MODEL": "smollm2"},
            workdir,
            args.answers,
        )
        vllm = FakeVllm(model="/models/base", served_names=["llama-2-7b-chat"]).start()
        try:
            tier = run_chatbot(
                {
                    **common,
                    "BIGBERTHA_LLM__BACKEND": "openai",
                    "BIGBERTHA_LLM__MODEL": "llama-2-7b-chat",
                    "BIGBERTHA_LLM__API_BASE": f"{vllm.url}/v1",
                },
                workdir,
                args.answers,
            )
        finally:
            vllm.stop()
    result = {
        "answers": args.answers,
        "in_process": in_process,
        "tier": tier,
        "rss_ratio_tier_over_in_process": round(tier["rss_mib"] / in_process["rss_mib"], 3),
        "peak_ratio_tier_over_in_process": round(tier["peak_mib"] / in_process["peak_mib"], 3),
    }
    print(f"in process (SmolLM2): RSS {in_process['rss_mib']} MiB, peak {in_process['peak_mib']}")
    print(f"on the tier:          RSS {tier['rss_mib']} MiB, peak {tier['peak_mib']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
