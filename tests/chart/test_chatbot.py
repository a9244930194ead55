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
