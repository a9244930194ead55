"""The chatbot in a real browser: Debian's Chromium driven by Playwright against `bigbertha chat`.

Ingest a known document with `bigbertha ingest`, ask about it, see the streamed answer and its
sources, click thumbs-down, and watch `bigbertha exporter`'s counter go up. The screenshot is
written to the test's tmp dir; with BIGBERTHA_REGENERATE=1 it also replaces
docs/images/chatbot.png (the README's picture), never silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.helpers import BIGBERTHA, CHROMIUM, CHROMIUM_ARGS, Proc, wait_http
from tests.chat.helpers import HANDBOOK, MASCOT, smollm2_chat_model
from tests.services import Service, free_port, missing

ROOT = Path(__file__).resolve().parents[2]


def _feedback_down(exporter_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{exporter_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "bigbertha_feedback":
            return sum(
                s.value
                for s in family.samples
                if s.name == "bigbertha_feedback_total" and s.labels.get("rating") == "down"
            )
    return 0.0


@pytest.fixture(scope="module")
def stack(
    milvus_server: Service, redis_server: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`bigbertha ingest` the handbook, then run `bigbertha chat` and `bigbertha exporter`."""
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} is missing (make setup installs Debian's chromium)")
    work = tmp_path_factory.mktemp("browser")
    # The session's SmolLM2, saved as a model directory: the app loads it in seconds.
    model_dir = work / "smollm2"
    model = smollm2_chat_model()
    # Loaded from GGUF the weights are already dequantised to float32; transformers only
    # refuses to save because the GGUF quantizer is still attached, so detach it for the save.
    quantizer = getattr(model.model, "hf_quantizer", None)
    model.model.hf_quantizer = None
    try:
        model.model.save_pretrained(model_dir)
    finally:
        model.model.hf_quantizer = quantizer
    model.tokenizer.save_pretrained(model_dir)
    (work / "handbook.md").write_text(HANDBOOK)
    chat_port, exporter_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BIGBERTHA_")},
        "BIGBERTHA_HOME": str(work / "home"),
        "BIGBERTHA_MILVUS__URI": str(milvus_server.extra["uri"]),
        "BIGBERTHA_MILVUS__COLLECTION": "browser_test",
        "BIGBERTHA_REDIS__URL": str(redis_server.extra["url"]),
        "BIGBERTHA_REDIS__TIMEOUT_SECONDS": "0.5",
        "BIGBERTHA_LLM__MODEL": str(model_dir),
        "BIGBERTHA_LLM__MAX_NEW_TOKENS": "32",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
        "BIGBERTHA_CHAT__SIMILARITY_CUTOFF": "0.3",
        "BIGBERTHA_MLFLOW__MODEL_NAME": "browser-llm",
        "BIGBERTHA_LOG__FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
    }
    ingested = subprocess.run(
        [BIGBERTHA, "ingest", str(work / "handbook.md")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    chat = Proc(
        [BIGBERTHA, "chat", "--host", "127.0.0.1", "--port", str(chat_port)], env, work / "chat.log"
    )
    exporter = Proc(
        [BIGBERTHA, "exporter", "--host", "127.0.0.1", "--port", str(exporter_port)],
        env,
        work / "exporter.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{chat_port}/_stcore/health", chat, 120)
        wait_http(f"http://127.0.0.1:{exporter_port}/healthz", exporter, 60)
        yield {
            "chat": f"http://127.0.0.1:{chat_port}",
            "exporter": f"http://127.0.0.1:{exporter_port}",
            "screenshot": str(work / "chatbot.png"),
        }
    finally:
        chat.stop()
        exporter.stop()


@pytest.mark.slow
def test_ask_see_sources_thumbs_down_counts_in_the_exporter(stack: dict[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    before = _feedback_down(stack["exporter"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(stack["chat"], wait_until="domcontentloaded")
            # The first session loads the model; the sidebar then names the serving version.
            expect(page.get_by_text("Model version:")).to_be_visible(timeout=180_000)
            box = page.get_by_test_id("stChatInputTextArea")
            box.fill(MASCOT)
            box.press("Enter")
            assistant = page.get_by_test_id("stChatMessage").nth(1)
            expect(assistant.get_by_text("Sources (1)")).to_be_visible(timeout=180_000)
            expect(assistant).to_contain_text("Gloria")
            expect(assistant).to_contain_text(
                "handbook.md, section The BigBertha Handbook > Office"
            )
            expect(assistant).to_contain_text("score")

            expect(assistant.get_by_label("Thumbs up")).to_be_visible()
            assistant.get_by_label("Thumbs down").click()
            expect(assistant).to_contain_text(
                "rated this answer down (model smollm2)", timeout=30_000
            )
            page.screenshot(path=stack["screenshot"], full_page=True)
        finally:
            browser.close()

    deadline = time.monotonic() + 15
    while _feedback_down(stack["exporter"]) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _feedback_down(stack["exporter"]) == before + 1
    shot = Path(stack["screenshot"])
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("BIGBERTHA_REGENERATE") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "images" / "chatbot.png")
