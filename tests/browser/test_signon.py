"""Sign-on in a real browser: `bigbertha chat` with chat.auth on, a real OpenID provider on
127.0.0.1 (oidc-provider-mock), Chromium driven by Playwright. Someone not signed in sees only
the sign-in page; two people sign in at the provider, ask and vote; their votes count as two
people's, the second vote of the one with one vote an hour is refused with a message; and
`bigbertha ask --server` needs a token from the same provider."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigbertha.chat.identity import pseudonym
from bigbertha.chat.signon import subject
from bigbertha.telemetry.feedback import KEY as FEEDBACK_KEY
from tests.browser.helpers import BIGBERTHA, CHROMIUM, CHROMIUM_ARGS, Proc, wait_http
from tests.chat.helpers import id_token
from tests.services import Service, free_port, missing

IDENTITY_KEY = "browser-identity-key"
QUESTION = "Who is the mascot?"


@pytest.fixture(scope="module")
def chatbot(
    milvus_server: Service,
    redis_server: Service,
    oidc_server: Service,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """`bigbertha chat` with sign-on against the provider; a tiny model answers (no documents:
    this is about who asks, not what the answer says)."""
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} is missing (make setup installs Debian's chromium)")
    work = tmp_path_factory.mktemp("signon")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    issuer = str(oidc_server.extra["issuer"])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BIGBERTHA_")},
        "BIGBERTHA_HOME": str(work / "home"),
        "BIGBERTHA_MILVUS__URI": str(milvus_server.extra["uri"]),
        "BIGBERTHA_MILVUS__COLLECTION": "signon_test",
        "BIGBERTHA_REDIS__URL": str(redis_server.extra["url"]),
        "BIGBERTHA_LLM__MODEL": str(tiny_model),
        "BIGBERTHA_LLM__MAX_NEW_TOKENS": "8",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
        "BIGBERTHA_MLFLOW__MODEL_NAME": "signon-llm",
        "BIGBERTHA_CHAT__VOTES_PER_HOUR": "1",
        "BIGBERTHA_CHAT__IDENTITY_KEY": IDENTITY_KEY,
        "BIGBERTHA_CHAT__AUTH__ENABLED": "true",
        "BIGBERTHA_CHAT__AUTH__ISSUER": issuer,
        "BIGBERTHA_CHAT__AUTH__CLIENT_ID": "bigbertha-chat",
        "BIGBERTHA_CHAT__AUTH__CLIENT_SECRET": "client-secret",
        "BIGBERTHA_CHAT__AUTH__COOKIE_SECRET": "a-cookie-secret-of-at-least-32-chars",
        "BIGBERTHA_CHAT__AUTH__REDIRECT_URI": f"{url}/oauth2callback",
        "BIGBERTHA_LOG__FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
    }
    chat = Proc([BIGBERTHA, "chat", "--host", "127.0.0.1", "--port", str(port)], env, work / "log")
    try:
        wait_http(f"{url}/_stcore/health", chat, 120)
        yield {"url": url, "issuer": issuer, "redis": redis_server, "proc": chat}
    finally:
        chat.stop()


def _sign_in(browser: Any, url: str, who: str) -> Any:
    from playwright.sync_api import expect

    page = browser.new_context().new_page()
    page.goto(url, wait_until="domcontentloaded")
    expect(page.get_by_text("Sign in to ask about your documents")).to_be_visible(timeout=60_000)
    assert page.get_by_test_id("stChatInputTextArea").count() == 0  # nothing to ask with
    page.get_by_role("button", name="Sign in").click()
    page.get_by_placeholder("sub").fill(who)  # the provider's own sign-in form
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Signed in.")).to_be_visible()
    return page


def _ask_and_vote(page: Any, turn: int) -> Any:
    from playwright.sync_api import expect

    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(QUESTION)
    box.press("Enter")
    answer = page.get_by_test_id("stChatMessage").nth(2 * turn + 1)
    expect(answer.get_by_label("Thumbs down")).to_be_visible(timeout=120_000)
    answer.get_by_label("Thumbs down").click()
    return answer


@pytest.mark.slow
def test_people_sign_in_ask_and_vote_as_themselves(chatbot: dict[str, Any]) -> None:
    import redis
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice = _sign_in(browser, chatbot["url"], "alice@example.com")
            rated = "rated this answer down"
            expect(_ask_and_vote(alice, 0)).to_contain_text(rated, timeout=30_000)
            # Alice's second vote within the hour is over chat.votes_per_hour (1).
            expect(_ask_and_vote(alice, 1)).to_contain_text(
                "too many votes: at most 1 per hour per person", timeout=30_000
            )
            bob = _sign_in(browser, chatbot["url"], "bob@example.com")
            expect(_ask_and_vote(bob, 0)).to_contain_text(rated, timeout=30_000)
        finally:
            browser.close()

    # Redis holds two people's votes, by pseudonym: never the subject or the e-mail.
    client = redis.Redis.from_url(str(chatbot["redis"].extra["url"]), decode_responses=True)
    records = [json.loads(r) for r in client.lrange(FEEDBACK_KEY, 0, -1)]
    votes = [r for r in records if r["rating"] == "down" and r["question"] == QUESTION]
    key = IDENTITY_KEY.encode()
    people = {
        pseudonym(subject(chatbot["issuer"], f"{n}@example.com"), key) for n in ("alice", "bob")
    }
    assert {r["contributor"] for r in votes} == people and len(votes) == 2
    assert "example.com" not in json.dumps(records)

    # The API of the same server: a token from the provider, or nothing answered.
    ask = [BIGBERTHA, "ask", "--server", chatbot["url"], QUESTION]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BIGBERTHA_")}
    refused = subprocess.run(ask, env=clean, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "requires sign-on and refused a request without one" in refused.stderr
    token = id_token(chatbot["issuer"], "nightly-script")
    answered = subprocess.run(
        ask,
        env={**clean, "BIGBERTHA_CHAT__API_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answered.returncode == 0, answered.stdout + answered.stderr
