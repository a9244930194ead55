"""Every wire between rendered objects connects: selectors, ports, the alert webhook, secrets,
config maps, service accounts and the settings the processes read."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from bigbertha.core.settings import Settings
from tests.chart.render import ROOT, env_values, find, one, pod_specs, workflow_containers

MONITORING = (ROOT / "templates" / "monitoring").is_dir()


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_templates(docs: list[dict[str, Any]]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return [
        (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ]


def test_services_select_pods_and_target_named_ports(docs: list[dict[str, Any]]) -> None:
    for svc in find(docs, "Service"):
        pods = [
            p for labels, p in _pod_templates(docs) if _matches(svc["spec"]["selector"], labels)
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            names = {
                cp.get("name") for p in pods for c in p["containers"] for cp in c.get("ports", [])
            }
            assert port["targetPort"] in names, f"{svc['metadata']['name']}: {port['targetPort']}"


def test_service_monitor_scrapes_the_exporter_by_port_name(docs: list[dict[str, Any]]) -> None:
    monitor = one(docs, "ServiceMonitor", "bigbertha-exporter")
    svc = one(docs, "Service", "bigbertha-exporter")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["bigbertha"]
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"]
    assert "http-metrics" in port_names
    # kube-prometheus-stack keeps its default selector release=<release> (values.yaml), which
    # picks up the stack's own monitors and this one.
    assert monitor["metadata"]["labels"]["release"] == "bigbertha"


def test_prometheus_objects_carry_the_stack_selector_label(docs: list[dict[str, Any]]) -> None:
    for kind in ("ServiceMonitor", "PrometheusRule"):
        for doc in find(docs, kind):
            assert doc["metadata"]["labels"].get("release") == "bigbertha", (
                f"{kind}/{doc['metadata']['name']} would not be selected by the stack's Prometheus"
            )


def _webhook(docs: list[dict[str, Any]]) -> tuple[str, int, str, dict[str, str]]:
    source = one(docs, "EventSource", "bigbertha-alerts")
    hook = source["spec"]["webhook"]["alertmanager"]
    ports = [p["port"] for p in source["spec"]["service"]["ports"]]
    assert int(hook["port"]) in ports
    return (
        f"{source['metadata']['name']}-eventsource-svc",
        int(hook["port"]),
        hook["endpoint"],
        hook["authSecret"],
    )


@pytest.mark.skipif(not MONITORING, reason="templates/monitoring (the telemetry part) not present")
def test_alertmanager_config_posts_to_the_webhook_with_its_token(
    docs: list[dict[str, Any]],
) -> None:
    service, port, endpoint, auth = _webhook(docs)
    configs = find(docs, "AlertmanagerConfig")
    assert configs, "no AlertmanagerConfig rendered"
    hooks = [
        w for c in configs for r in c["spec"]["receivers"] for w in r.get("webhookConfigs", [])
    ]
    assert hooks
    for hook in hooks:
        url = urlsplit(hook["url"])
        assert url.hostname == f"{service}.bigbertha.svc" and url.port == port
        assert url.path == endpoint
        credentials = hook["httpConfig"]["authorization"]["credentials"]
        assert credentials == {"name": auth["name"], "key": auth["key"]}


def test_webhook_url_helper_resolves_to_the_event_source(docs: list[dict[str, Any]]) -> None:
    """The NOTES (and the AlertmanagerConfig) use bigbertha.events.webhookUrl."""
    from tests.chart.render import render_env_raw

    service, port, endpoint, _ = _webhook(docs)
    notes = next(v for k, v in render_env_raw("default").items() if k.endswith("NOTES.txt"))
    assert f"http://{service}.bigbertha.svc:{port}{endpoint}" in notes


def _refs(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Names of the Secrets, ConfigMaps and ServiceAccounts the objects refer to."""
    refs: dict[str, set[str]] = {"Secret": set(), "ConfigMap": set(), "ServiceAccount": set()}

    def walk(node: Any, parent: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                    refs["Secret"].add(value["name"])
                elif key in ("configMapKeyRef", "configMapRef") and isinstance(value, dict):
                    refs["ConfigMap"].add(value["name"])
                elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                    refs["Secret"].add(value["secretName"])
                elif key == "configMap" and isinstance(value, dict) and "name" in value:
                    refs["ConfigMap"].add(value["name"])
                elif (
                    key in ("authSecret", "accessKey", "secretKey", "credentials")
                    and isinstance(value, dict)
                    and "name" in value
                ):
                    refs["Secret"].add(value["name"])
                elif key == "serviceAccountName":
                    refs["ServiceAccount"].add(value)
                walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item, parent)

    for doc in docs:
        if doc["kind"] in ("Secret", "ConfigMap", "ServiceAccount"):
            continue
        walk(doc.get("spec", {}))
    return refs


def test_every_reference_is_rendered_or_a_documented_existing_secret(
    env: str, docs: list[dict[str, Any]]
) -> None:
    values = env_values(env)
    existing = {  # Secrets values/<env>.yaml names as created beforehand (docs/install.md)
        values.get("objectStorage", {}).get("existingSecret"),
        values.get("redis", {}).get("auth", {}).get("existingSecret"),
        values.get("events", {}).get("webhook", {}).get("auth", {}).get("existingSecret"),
        values.get("huggingface", {}).get("existingSecret"),
    } - {None, ""}
    for kind, names in _refs(docs).items():
        rendered = {d["metadata"]["name"] for d in find(docs, kind)}
        missing = names - rendered - (existing if kind == "Secret" else set())
        assert not missing, f"{env}: {kind} referenced but neither rendered nor existing: {missing}"


def _env_names(docs: list[dict[str, Any]]) -> set[str]:
    names = set(one(docs, "ConfigMap", "bigbertha-settings")["data"])
    containers = [c for _, p in pod_specs(docs) for c in p["containers"]]
    containers += [tpl["container"] for _, tpl in workflow_containers(docs)]
    names |= {e["name"] for c in containers for e in c.get("env", [])}
    # BIGBERTHA_HOME is where a process keeps local state (settings.HOME), not a setting.
    return {n for n in names if n.startswith("BIGBERTHA_") and n != "BIGBERTHA_HOME"}


def test_settings_env_names_are_real_settings(docs: list[dict[str, Any]]) -> None:
    """The chart's env names match src/bigbertha/settings.py exactly (a typo would be ignored)."""
    sections = Settings.model_fields
    for name in _env_names(docs):
        match = re.fullmatch(r"BIGBERTHA_([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
        assert match, f"{name}: not BIGBERTHA_<SECTION>__<KEY>"
        section, key = match[1].lower(), match[2].lower()
        assert section in sections, f"{name}: no settings section {section!r}"
        fields = sections[section].annotation.model_fields  # type: ignore[union-attr]
        assert key in fields, f"{name}: settings.{section} has no field {key!r}"


def test_pods_reach_each_other_through_the_services(docs: list[dict[str, Any]]) -> None:
    data = one(docs, "ConfigMap", "bigbertha-settings")["data"]
    assert data["BIGBERTHA_S3__ENDPOINT"] == "bigbertha-minio.bigbertha.svc:9000"
    assert data["BIGBERTHA_MILVUS__URI"] == "http://bigbertha-milvus.bigbertha.svc:19530"
    assert data["BIGBERTHA_MLFLOW__TRACKING_URI"] == "http://bigbertha-mlflow.bigbertha.svc:80"
    assert data["BIGBERTHA_EXPORTER__HOST"] == "0.0.0.0"
    chatbot = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in chatbot["containers"][0]["env"]}
    assert env["BIGBERTHA_REDIS__URL"]["value"].startswith(
        "redis://:$(REDIS_PASSWORD)@bigbertha-redis."
    )
    redis = one(docs, "Service", "bigbertha-redis")
    assert redis["spec"]["ports"][0]["port"] == 6379


def test_config_changes_roll_the_pods() -> None:
    from tests.chart.render import render

    def checksum(values: dict[str, Any]) -> str:
        deploy = one(render(values), "Deployment", "bigbertha-chatbot")
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"settings": {"chat": {"top_k": 8}}})


def test_network_policies_deny_by_default_and_open_each_path(docs: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    deny = policies["bigbertha-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny
    ours = [labels for labels, _ in _pod_templates(docs)]
    ours += [wt["spec"]["podMetadata"]["labels"] for wt in find(docs, "WorkflowTemplate")]
    ours += [
        s["spec"]["template"]["metadata"]["labels"]
        for s in find(docs, "Sensor") + find(docs, "EventSource")
    ]
    for labels in ours:
        assert _matches(deny["podSelector"]["matchLabels"], labels), labels
    exporter_from = policies["bigbertha-exporter"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/name": "prometheus"} in [
        peer.get("podSelector", {}).get("matchLabels") for peer in exporter_from
    ]
    events_in = policies["bigbertha-events"]["ingress"][0]
    assert events_in["ports"][0]["port"] == _webhook(docs)[1]
    assert events_in["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "alertmanager"
    }
