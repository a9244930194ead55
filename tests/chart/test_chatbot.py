"""The chatbot Deployment's probes hit routes `bigbertha chat` really serves: alive while the
model loads (Streamlit's health check), ready only once /api/status says it is loaded."""

from __future__ import annotations

from typing import Any

from bigbertha.chat import api as chat_api
from bigbertha.core.settings import Settings
from tests.chart.render import find


def test_chatbot_is_ready_only_once_its_model_is_loaded(
    default_docs: list[dict[str, Any]],
) -> None:
    deploy = find(default_docs, "Deployment", "bigbertha-chatbot")[0]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    served = {route.path for route in chat_api.routes(chat_api.EngineSlot(Settings()))}
    assert probes["readinessProbe"] == {"path": "/api/status", "port": "http"}
    assert probes["readinessProbe"]["path"] in served
    # Liveness and startup do not wait for the model: a slow load must not restart the pod.
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/_stcore/health"


def test_every_replica_keys_pseudonyms_with_one_kept_secret(
    default_docs: list[dict[str, Any]],
) -> None:
    """The chatbot reads chat.identity_key from the release's Secret: generated once and kept
    (lookup) by default, the operator's in prod; people's limits are settings from values."""
    from tests.chart.render import env_values, one, render

    for docs, secret in ((default_docs, "bigbertha-identity"), (render(env_values("prod")), None)):
        deploy = one(docs, "Deployment", "bigbertha-chatbot")
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["BIGBERTHA_CHAT__IDENTITY_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret or "bigbertha-identity", "key": "identityKey"}
        generated = [
            d for d in find(docs, "Secret") if d["metadata"]["name"] == "bigbertha-identity"
        ]
        assert len(generated) == (1 if secret else 0)  # prod: the operator's Secret
        settings = one(docs, "ConfigMap", "bigbertha-settings")["data"]
        assert settings["BIGBERTHA_CHAT__QUESTIONS_PER_MINUTE"] == "20"
        assert settings["BIGBERTHA_CHAT__VOTES_PER_HOUR"] == "120"
        assert settings["BIGBERTHA_FINETUNE__MAX_ROWS_PER_CONTRIBUTOR"] == "20"


def test_prod_chatbot_signs_on_at_the_provider_it_may_reach() -> None:
    """Prod's chatbot gets its provider and client from values, the secrets from the operator's
    Secret, and egress to the provider's port only; the settings it renders are valid."""
    from tests.chart.render import deep_merge, env_values, one, render

    docs = render(env_values("prod"))
    (container,) = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    values = {k: e["value"] for k, e in env.items() if "AUTH" in k and "value" in e}
    assert values == {
        "BIGBERTHA_CHAT__AUTH__ENABLED": "true",
        "BIGBERTHA_CHAT__AUTH__ISSUER": "https://sso.example.com/realms/bigbertha",
        "BIGBERTHA_CHAT__AUTH__CLIENT_ID": "bigbertha-chat",
        "BIGBERTHA_CHAT__AUTH__REDIRECT_URI": "https://chat.example.com/oauth2callback",
        "BIGBERTHA_CHAT__AUTH__AUDIENCES": "[]",
    }
    for name, key in (("CLIENT_SECRET", "clientSecret"), ("COOKIE_SECRET", "cookieSecret")):
        ref = env[f"BIGBERTHA_CHAT__AUTH__{name}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "bigbertha-signon", "key": key}
    auth = Settings(
        chat={
            "auth": {
                "enabled": True,
                "issuer": values["BIGBERTHA_CHAT__AUTH__ISSUER"],
                "client_id": values["BIGBERTHA_CHAT__AUTH__CLIENT_ID"],
                "redirect_uri": values["BIGBERTHA_CHAT__AUTH__REDIRECT_URI"],
                "client_secret": "s",
                "cookie_secret": "c" * 32,
            }
        }
    ).chat.auth
    assert auth.enabled
    egress = one(docs, "NetworkPolicy", "bigbertha-chatbot")["spec"]["egress"]
    provider = [rule for rule in egress if {"port": 443, "protocol": "TCP"} in rule["ports"]]
    assert provider == [
        {
            "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
            "ports": [{"port": 443, "protocol": "TCP"}],
        }
    ]
    # Behind an Ingress the public URL is its host.
    ingress = deep_merge(
        env_values("prod"),
        {
            "chatbot": {
                "auth": {"redirectUri": ""},
                "ingress": {"enabled": True, "host": "ask.corp"},
            }
        },
    )
    (container,) = one(render(ingress), "Deployment", "bigbertha-chatbot")["spec"]["template"][
        "spec"
    ]["containers"]
    uri = {e["name"]: e.get("value") for e in container["env"]}[
        "BIGBERTHA_CHAT__AUTH__REDIRECT_URI"
    ]
    assert uri == "https://ask.corp/oauth2callback"
