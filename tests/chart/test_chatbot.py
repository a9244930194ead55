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
