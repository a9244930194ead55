"""Sign-on on the JSON API (chat/signon.py): bearer tokens from a real OpenID provider on
127.0.0.1 (oidc-provider-mock: discovery, published keys, signed ID tokens), checked by the
chatbot's routes over a stub engine and the real Redis. The browser's sign-in is in
tests/browser/test_signon.py."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest

from bigbertha.chat import api as chat_api
from bigbertha.chat import signon
from bigbertha.core.settings import AuthSettings
from tests.chat.helpers import (
    MASCOT,
    client_for,
    id_token,
    metric,
    refused,
    settings_for,
    stub_engine,
    wait_for_count,
)
from tests.services import Service, free_port


def _auth(issuer: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "issuer": issuer,
        "client_id": "bigbertha-chat",
        "client_secret": "client-secret",
        "cookie_secret": "c" * 32,
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "audiences": ["bigbertha-scripts"],
    }


def _client(redis_server: Service, issuer: str, **chat: Any) -> tuple[Any, chat_api.EngineSlot]:
    settings = settings_for(
        redis_server, auth=_auth(issuer), identity_key="k", max_answers_per_client=50, **chat
    )
    slot = chat_api.EngineSlot(settings, stub_engine)
    slot.start().join(10)
    return client_for(slot), slot


def _forged(issuer: str, sub: str) -> str:
    """A token with every right claim, signed by a key that is not the provider's."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    now = int(time.time())
    claims = {"iss": issuer, "sub": sub, "aud": "bigbertha-chat", "exp": now + 600, "iat": now}
    return jwt.encode({"alg": "RS256"}, claims, RSAKey.generate_key(2048))


def _ask(client: Any, token: str | None, feedback: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/api/ask", json={"question": MASCOT, "feedback": feedback}, headers=headers)


@pytest.mark.slow
def test_the_api_answers_people_with_the_providers_tokens_and_counts_people(
    redis_server: Service, oidc_server: Service
) -> None:
    issuer = str(oidc_server.extra["issuer"])
    client, slot = _client(redis_server, issuer, votes_per_hour=3)
    settings = slot.get().settings
    before = refused(settings, "unauthenticated")
    alice, bob = id_token(issuer, "alice@example.com"), id_token(issuer, "bob@example.com")

    # The readiness probe has no token: it learns only that answers can be served.
    assert client.get("/api/status").json() == {"ready": True}
    full = client.get("/api/status", headers={"Authorization": f"Bearer {alice}"})
    assert full.status_code == 200 and full.json()["model_version"] == "stub-1"

    # Without a valid token nothing is answered, each with the check that failed.
    for token, error in [
        (None, "Authorization: missing; send 'Bearer <token>'"),
        ("not.a.jwt", "bearer token: not a JWT"),
        (_forged(issuer, "alice@example.com"), "bearer token: bad_signature"),
        (
            id_token(issuer, "carol@example.com", client_id="another-app"),
            "bearer token: audience ['another-app'] is not this chatbot's",
        ),
    ]:
        response = _ask(client, token, "down")
        assert response.status_code == 401, response.text
        assert response.json()["error"].startswith(error)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    unauthenticated = functools.partial(refused, settings, "unauthenticated")
    assert wait_for_count(unauthenticated, before + 4) == before + 4
    # A script's service account: a token for one of chat.auth.audiences.
    script = id_token(issuer, "svc-nightly-eval", client_id="bigbertha-scripts")
    assert _ask(client, script).status_code == 200

    # Two people's votes count as two, each under their own pseudonym.
    downs = metric(settings, "bigbertha_feedback_total", "stub-1", "down")
    assert _ask(client, alice, "down").status_code == 200
    assert _ask(client, bob, "down").status_code == 200
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 2
    engine = slot.get()
    people = {r["contributor"] for r in engine.feedback.read() if r["rating"] == "down"}
    alice_id = engine.person(signon.subject(issuer, "alice@example.com"))
    assert {alice_id, engine.person(signon.subject(issuer, "bob@example.com"))} <= people
    assert "alice@example.com" not in str(engine.feedback.read())

    # One person's hundred clicks on one answer are one vote: a click again replaces it.
    # (On a replica without a vote limit, so that only the one-vote rule is at work.)
    unlimited = _client(redis_server, issuer)[1].get()
    answer = unlimited.stream(MASCOT, None, alice_id).result()
    for _ in range(100):
        unlimited.rate(answer, "down", alice_id)
    assert metric(settings, "bigbertha_feedback_total", "stub-1", "down") == downs + 3

    # Alice cast 1 of her 3 votes of the hour through the API; the 4th is a 429 that says so.
    assert [_ask(client, alice, "down").status_code for _ in range(2)] == [200, 200]
    over = _ask(client, alice, "down")
    assert over.status_code == 429 and over.json()["error"].startswith("too many votes")
    assert _ask(client, bob, "down").status_code == 200  # Bob is not Alice


def test_the_api_says_so_when_the_provider_is_unreachable(redis_server: Service) -> None:
    client, _ = _client(redis_server, f"http://127.0.0.1:{free_port()}")
    response = _ask(client, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    assert response.status_code == 503
    assert response.json()["error"].startswith("sign-on provider http://127.0.0.1:")
    assert response.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"client_secret": None}, "sign-on is enabled but client_secret unset"),
        ({"issuer": "http://idp.example.com"}, "must be https:// (http only on loopback)"),
        ({"redirect_uri": "https://chat.example.com/"}, "must end in /oauth2callback"),
        ({"cookie_secret": "short"}, "cookie_secret: at least 32 characters"),
    ],
)
def test_sign_on_settings_are_complete_or_refused(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        AuthSettings(**{**_auth("https://idp.example.com"), **change})


def test_streamlit_reads_its_provider_from_a_private_file() -> None:
    auth = AuthSettings(**{**_auth("https://idp.example.com/realms/x"), "client_secret": 'a"b'})
    path = signon.streamlit_secrets(auth)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    import tomllib

    section = tomllib.loads(path.read_text())["auth"]
    assert section["client_secret"] == 'a"b'  # quoted, not cut short
    assert section["server_metadata_url"] == (
        "https://idp.example.com/realms/x/.well-known/openid-configuration"
    )
