"""Alertmanager config from the chart's AlertmanagerConfig, for machines without the operator.

`bigbertha demo` and the tests run a real Alertmanager; this produces the alertmanager.yml that
prometheus-operator would generate from the rendered AlertmanagerConfig, so the local route is
the cluster's route.
"""

from __future__ import annotations

from typing import Any

import yaml


def alertmanager_yaml(
    amc: dict[str, Any], *, namespace: str, token: str, url: str | None = None
) -> str:
    """The alertmanager.yml the operator generates from one AlertmanagerConfig.

    As prometheus-operator does: receivers are renamed <namespace>/<name>/<receiver>, the route
    becomes a first-level child route with `continue: true`, and (strategy OnNamespace) its
    namespace matcher is replaced by the object's namespace. `url` replaces the in-cluster
    webhook address (a local receiver); the Secret's token is inlined.
    """
    spec = amc["spec"]
    prefix = f"{namespace}/{amc['metadata']['name']}/"
    route = spec["route"]
    matchers = [
        f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"'
        for m in route.get("matchers", [])
        if m["name"] != "namespace"
    ] + [f'namespace="{namespace}"']
    receivers: list[dict[str, Any]] = [{"name": "null"}]
    for receiver in spec["receivers"]:
        hooks = []
        for hook in receiver.get("webhookConfigs", []):
            auth = hook["httpConfig"]["authorization"]
            hooks.append(
                {
                    "url": url or hook["url"],
                    "send_resolved": hook.get("sendResolved", True),
                    "max_alerts": hook.get("maxAlerts", 0),
                    "http_config": {
                        "authorization": {"type": auth.get("type", "Bearer"), "credentials": token}
                    },
                }
            )
        receivers.append({"name": prefix + receiver["name"], "webhook_configs": hooks})
    child = {
        "receiver": prefix + route["receiver"],
        "matchers": matchers,
        "group_by": route["groupBy"],
        "group_wait": route["groupWait"],
        "group_interval": route["groupInterval"],
        "repeat_interval": route["repeatInterval"],
        "continue": True,
    }
    config = {"route": {"receiver": "null", "routes": [child]}, "receivers": receivers}
    return yaml.safe_dump(config, sort_keys=False)
