"""Every wire of the whole release connects, across subchart boundaries too: Services select pods
and target real ports, every in-cluster address a process is configured with resolves to a
rendered Service and port, every Secret and ConfigMap a pod reads exists with the key it reads,
kube-prometheus-stack picks up our rules, monitor and Alertmanager route, Grafana's sidecar our
dashboard, MLflow accepts the Host its clients send, and no two objects share a name."""

from __future__ import annotations

import collections
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from bigbertha.core.settings import Settings
from bigbertha.local import chart as chart_module
from tests.chart import cluster
from tests.chart.render import (
    ROOT,
    Release,
    env_values,
    find,
    one,
    ours,
    pod_specs,
    render_env_raw,
    subchart,
    workflow_containers,
)

VALUES = chart_module.load_values([ROOT / "values.yaml"])


def _cluster(
    docs: list[dict[str, Any]], release: Release
) -> tuple[list[cluster.Pod], list[cluster.Service]]:
    return cluster.pods(docs, release.namespace), cluster.services(docs, release.namespace)


def _addresses(release: Release) -> cluster.Addresses:
    """In-cluster hosts: DNS names of the cluster, and names starting with our prefixes (the
    data subcharts' fullnameOverrides start with `bigbertha-`, the other subcharts' names with
    the release name)."""
    return cluster.Addresses(release.namespace, ("bigbertha-", f"{release.name}-"))


def test_services_select_pods_and_target_named_ports(
    docs: list[dict[str, Any]], release: Release
) -> None:
    """Every Service of the release selects a pod that will exist (the operators' pods too:
    Prometheus, Alertmanager, EventBus, EventSource) and sends each port to a port it opens."""
    pods, services = _cluster(docs, release)
    problems = []
    for svc in services:
        if svc.namespace != release.namespace or not svc.selector:
            continue  # kube-prometheus-stack's kube-system Services select control-plane pods
        backends = cluster.selected_pods(svc, pods)
        if not backends:
            problems.append(f"Service {svc.name} ({svc.origin}) selects no pod")
            continue
        for port in svc.ports:
            if not any(
                (n := cluster.target_port(port, p)) is not None and n in p.port_numbers()
                for p in backends
            ):
                problems.append(f"Service {svc.name} port {port['port']}: no pod opens {port}")
    assert not problems, "\n".join(problems)


# -- addresses -------------------------------------------------------------------------------

# Milvus clients find their coordinators through the coordinators' etcd sessions, never through
# the `<coord>.address` its chart writes into milvus.yaml (milvus internal/distributed/rootcoord/
# client/client.go getRootCoordAddr: sess.GetSessions): in 2.6 one mixcoord serves them all.
MILVUS_DISCOVERED = re.compile(
    r"ConfigMap/\S*milvus \S+\.(rootCoord|queryCoord|indexCoord|dataCoord) address$"
)


def _external_hosts(env: str) -> set[str]:
    """Hosts the values name outside the release on purpose: prod's managed database."""
    values = chart_module.merge_values(VALUES, env_values(env))
    if values["mlflowDatabase"]["enabled"]:
        return set()
    return {values["mlflow"]["backendStore"]["postgres"]["host"]}


def _unresolved(
    addresses: list[cluster.Address],
    docs: list[dict[str, Any]],
    release: Release,
    env: str,
) -> list[str]:
    pods, services = _cluster(docs, release)
    replicas = cluster.stateful_pods(docs, release.namespace)
    external = _external_hosts(env)
    problems = []
    for address in addresses:
        if MILVUS_DISCOVERED.search(address.where) or address.host in external:
            continue
        resolved = cluster.resolve(address, services, pods, release.namespace, replicas)
        if isinstance(resolved, str):
            problems.append(f"{address.where}: {address.host}:{address.port}: {resolved}")
    return problems


def test_every_in_cluster_address_resolves_to_a_service_and_port(
    env: str, release: Release, cluster_docs: list[dict[str, Any]]
) -> None:
    """Our settings, MLflow's database and S3 endpoint, Milvus' etcd, MinIO and message queue,
    Grafana's datasources, ...: every address in a ConfigMap or a container's env, and every
    connection a custom resource declares (EventBus, MinIO events, Alertmanager's webhook,
    Prometheus' Alertmanager and scrape targets)."""
    docs = cluster_docs
    pods, services = _cluster(docs, release)
    found = cluster.configured_addresses(docs, pods, _addresses(release))
    found += [a for _, a in cluster.declared_wires(docs, pods, services, release.namespace)]
    hosts = {a.host.split(".")[0] for a in found}
    assert {"bigbertha-minio", "bigbertha-milvus", "bigbertha-mlflow", "bigbertha-redis"} <= hosts
    problems = _unresolved(cluster.dedupe(found), docs, release, env)
    assert not problems, "\n".join(problems)


def test_an_address_to_nowhere_is_caught(default_docs: list[dict[str, Any]]) -> None:
    """The defect this suite was written for: MLflow told PGHOST=<release>-mlflow-postgresql
    while the database's Service had another name."""
    release = Release("bigbertha", "bigbertha")
    wrong = [
        cluster.Address("ConfigMap/x PGHOST", "bigbertha-mlflow-postgresql", 5432),
        cluster.Address("env", "bigbertha-minio.bigbertha.svc", 9001),
        cluster.Address("env", "bigbertha-etcd-3.bigbertha-etcd-headless.bigbertha.svc", 2379),
        cluster.Address("env", "bigbertha-mlflow", 5000),
    ]
    problems = _unresolved(wrong, default_docs, release, "default")
    assert len(problems) == 4, problems
    scanned = list(_addresses(release).scan("s3://bigbertha-artifacts/x http://localhost:80", "x"))
    assert scanned == [], "buckets and loopback are not in-cluster addresses"


def test_milvus_uses_an_explicit_message_queue_it_can_reach(
    env: str, release: Release, docs: list[dict[str, Any]]
) -> None:
    """Cluster mode with no queue enabled makes the chart write no `mq:` and Milvus dial Pulsar
    on localhost; standalone and prod use Woodpecker, which stores in MinIO."""
    config = one(docs, "ConfigMap", "bigbertha-milvus")["data"]["default.yaml"]
    parsed = _yaml(config)
    assert parsed["mq"]["type"] == "woodpecker", parsed.get("mq")
    assert parsed["woodpecker"]["storage"]["type"] == "minio"
    minio = parsed["minio"]
    assert (minio["address"], int(minio["port"])) == ("bigbertha-minio", 9000)
    assert "pulsar" not in parsed and "kafka" not in parsed


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


# -- Secrets and ConfigMaps --------------------------------------------------------------------


def _pod_refs(pod: cluster.Pod) -> Iterator[tuple[str, str, str | None, bool, str]]:
    """(kind, name, key or None for all, optional, where) of every reference a pod makes."""
    for c in pod.containers:
        where = f"{pod.origin} container {c.get('name', '')}"
        for e in c.get("env") or []:
            for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                ref = (e.get("valueFrom") or {}).get(field)
                if ref:
                    yield kind, ref["name"], ref["key"], bool(ref.get("optional")), where
        for src in c.get("envFrom") or []:
            for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if field in src:
                    ref = src[field]
                    yield kind, ref["name"], None, bool(ref.get("optional")), where
    for v in pod.volumes:
        sources = [v] + list((v.get("projected") or {}).get("sources") or [])
        for src in sources:
            where = f"{pod.origin} volume {v.get('name')}"
            if "secret" in src:
                ref = src["secret"]
                name = ref.get("secretName") or ref.get("name")
                for key in [i["key"] for i in ref.get("items") or []] or [None]:
                    yield "Secret", name, key, bool(ref.get("optional")), where
            if "configMap" in src:
                ref = src["configMap"]
                for key in [i["key"] for i in ref.get("items") or []] or [None]:
                    yield "ConfigMap", ref["name"], key, bool(ref.get("optional")), where


def _resource_refs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str, str | None, bool, str]]:
    """Secret key references inside custom resources (EventSource credentials, the webhook
    token, AlertmanagerConfig credentials)."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str, str | None, bool, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key in ("secretKeyRef", "accessKey", "secretKey", "authSecret", "credentials")
                    and isinstance(value, dict)
                    and "name" in value
                ):
                    yield "Secret", value["name"], value.get("key"), False, where
                else:
                    yield from walk(value, where)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    for doc in docs:
        if doc["kind"] in (
            "EventSource",
            "Sensor",
            "AlertmanagerConfig",
            "Alertmanager",
            "Prometheus",
        ):
            yield from walk(doc.get("spec"), f"{doc['kind']}/{doc['metadata']['name']}")


def _documented_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, of every `kubectl create secret generic` in docs/install.md."""
    text = (ROOT / "docs" / "install.md").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        match = re.search(r"create secret generic (\S+)(.*)", line)
        if match:
            found[match[1]] = set(re.findall(r"--from-literal=([\w.-]+)=", match[2]))
    return found


def _named_existing_secrets(env: str) -> set[str]:
    """The Secrets an environment's values name as created beforehand (docs/install.md)."""
    v = chart_module.merge_values(VALUES, env_values(env))
    names = {
        v["objectStorage"]["existingSecret"],
        v["redis"]["auth"]["existingSecret"],
        v["events"]["webhook"]["auth"]["existingSecret"],
        v["huggingface"]["existingSecret"],
        v["mlflowDatabase"]["auth"]["existingSecret"],
        v["serving"]["auth"]["existingSecret"],
        v["chatbot"]["identity"]["existingSecret"],
        v["chatbot"]["auth"]["existingSecret"],
    }
    if not v["mlflowDatabase"]["enabled"]:
        names.add(v["mlflow"]["backendStore"]["existingDatabaseSecret"]["name"])
    grafana = v["kube-prometheus-stack"].get("grafana") or {}
    names.add((grafana.get("admin") or {}).get("existingSecret"))
    return names - {"", None}


def _hook_created_secrets(docs: list[dict[str, Any]]) -> set[str]:
    """Secrets a rendered install hook creates: kube-webhook-certgen's `create --secret-name`
    (kube-prometheus-stack's admission webhook certificate)."""
    names = set()
    for job in find(docs, "Job"):
        for c in job["spec"]["template"]["spec"]["containers"]:
            for arg in c.get("args") or []:
                if arg.startswith("--secret-name="):
                    names.add(arg.split("=", 1)[1])
    return names


def test_every_secret_and_configmap_a_pod_reads_exists_with_its_key(
    env: str, release: Release, docs: list[dict[str, Any]]
) -> None:
    pods, _ = _cluster(docs, release)
    rendered = {
        (d["kind"], d["metadata"]["name"]): set(d.get("data") or {})
        | set(d.get("stringData") or {})
        | set(d.get("binaryData") or {})
        for d in docs
        if d["kind"] in ("Secret", "ConfigMap")
    }
    existing = _named_existing_secrets(env)
    documented = _documented_secrets()
    created_by_hooks = _hook_created_secrets(docs)
    refs = [r for p in pods for r in _pod_refs(p)] + list(_resource_refs(docs))
    assert any(kind == "Secret" for kind, *_ in refs)
    problems = []
    for kind, name, key, optional, where in refs:
        if optional:
            continue
        if (kind, name) in rendered:
            if key is not None and key not in rendered[(kind, name)]:
                problems.append(f"{where}: {kind} {name} has no key {key!r}")
        elif kind == "Secret" and name in created_by_hooks:
            continue
        elif (kind, name) == ("ConfigMap", "kube-root-ca.crt"):
            continue  # Kubernetes publishes it in every namespace (a projected token's CA)
        elif kind == "Secret" and name in existing:
            if name not in documented:
                problems.append(
                    f"{where}: existing Secret {name}: docs/install.md never creates it"
                )
            elif key is not None and key not in documented[name]:
                problems.append(
                    f"{where}: existing Secret {name}: docs/install.md creates it without {key!r}"
                )
        else:
            problems.append(f"{where}: {kind} {name} is neither rendered nor a documented Secret")
    assert not problems, f"{env}:\n" + "\n".join(sorted(set(problems)))


# -- monitoring ----------------------------------------------------------------------------------


def _selected(
    owner: dict[str, Any], prefix: str, objects: list[dict[str, Any]], release: Release
) -> list[str]:
    return [
        o["metadata"]["name"] for o in objects if cluster.picks(owner, prefix, o, release.namespace)
    ]


def test_the_stack_selects_our_rules_monitor_and_alertmanager_route(
    cluster_docs: list[dict[str, Any]], release: Release
) -> None:
    """With the real kube-prometheus-stack Prometheus and Alertmanager objects (the release's, or
    the cluster's own with its defaults in another namespace): their label and namespace
    selectors pick up our PrometheusRule, ServiceMonitor and AlertmanagerConfig."""
    docs = cluster_docs
    (prometheus,) = find(docs, "Prometheus")
    (alertmanager,) = find(docs, "Alertmanager")
    rules = _selected(prometheus, "rule", find(docs, "PrometheusRule"), release)
    monitors = _selected(prometheus, "serviceMonitor", find(docs, "ServiceMonitor"), release)
    routes = _selected(
        alertmanager, "alertmanagerConfig", find(docs, "AlertmanagerConfig"), release
    )
    assert "bigbertha-alerts" in rules
    assert "bigbertha-exporter" in monitors
    assert "bigbertha-retrain" in routes
    # ... and Prometheus sends its alerts to that Alertmanager.
    (target,) = prometheus["spec"]["alerting"]["alertmanagers"]
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    assert target["namespace"] == (alertmanager["metadata"].get("namespace") or release.namespace)
    assert cluster.selects(
        {"matchLabels": services[target["name"]]["spec"]["selector"]},
        next(
            p for p in cluster.pods(docs, release.namespace) if "Alertmanager/" in p.origin
        ).labels,
    )


def test_a_selector_change_would_be_caught(default_docs: list[dict[str, Any]]) -> None:
    release = Release("bigbertha", "bigbertha")
    (prometheus,) = find(default_docs, "Prometheus")
    other = {
        **prometheus,
        "spec": {**prometheus["spec"], "ruleSelector": {"matchLabels": {"release": "x"}}},
    }
    assert "bigbertha-alerts" not in _selected(
        other, "rule", find(default_docs, "PrometheusRule"), release
    )
    nil_ns = {**prometheus, "spec": {**prometheus["spec"]}}
    nil_ns["spec"].pop("ruleNamespaceSelector")
    moved = [
        {**r, "metadata": {**r["metadata"], "namespace": "elsewhere"}}
        for r in find(default_docs, "PrometheusRule")
    ]
    assert _selected(nil_ns, "rule", moved, release) == [], "nil namespace selector: own namespace"


def test_grafana_sidecar_loads_our_dashboard(docs: list[dict[str, Any]], release: Release) -> None:
    grafana = [
        p
        for p in cluster.pods(docs, release.namespace)
        if p.chart == "grafana" and "Deployment/" in p.origin
    ]
    dashboard = one(docs, "ConfigMap", "bigbertha-dashboard")
    if not grafana:
        assert VALUES["dashboards"]["enabled"]  # shipped for a Grafana elsewhere (dev, local)
        return
    (pod,) = grafana
    loaded = cluster.consumed_configmaps(pod, docs)
    assert dashboard in loaded, "the Grafana sidecar's LABEL/LABEL_VALUE miss our dashboard"
    sidecar = next(c for c in pod.containers if c["name"] == "grafana-sc-dashboard")
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env.get("NAMESPACE") in ("ALL", release.namespace, None)


# -- MLflow -----------------------------------------------------------------------------------


def test_mlflow_accepts_the_host_header_of_every_client(
    docs: list[dict[str, Any]], release: Release
) -> None:
    """MLflow 3 refuses a Host it does not list (a DNS-rebinding guard); the clients send the
    host of their tracking URI (http.client omits port 80), a port-forward localhost:<port>.
    Checked with MLflow's own matcher (mlflow.server.security_utils)."""
    with warnings.catch_warnings():  # importing mlflow.server loads its SQLAlchemy store
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.security_utils import is_allowed_host_header

    env = one(docs, "ConfigMap", "bigbertha-mlflow-env-configmap")["data"]
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    uri = urlsplit(
        one(docs, "ConfigMap", "bigbertha-settings")["data"]["BIGBERTHA_MLFLOW__TRACKING_URI"]
    )
    assert uri.hostname
    hosts = [uri.hostname if uri.port in (None, 80) else f"{uri.hostname}:{uri.port}"]
    hosts += [f"{uri.hostname}:{uri.port}", "bigbertha-mlflow", "localhost:5000"]
    hosts += [f"bigbertha-mlflow.{release.namespace}.svc.cluster.local"]
    for host in hosts:
        assert is_allowed_host_header(allowed, host), f"MLflow would refuse Host: {host}"
    for host in ("evil.example", "bigbertha-mlflow.evil.example", "10.0.0.1"):
        assert not is_allowed_host_header(allowed, host), f"MLflow would accept Host: {host}"


def test_mlflow_uses_the_release_database(
    docs: list[dict[str, Any]], release: Release, env: str
) -> None:
    data = one(docs, "ConfigMap", "bigbertha-mlflow-env-configmap")["data"]
    values = chart_module.merge_values(VALUES, env_values(env))
    assert not [d for d in docs if subchart(d) == "postgresql"], "the bitnami PostgreSQL is off"
    if values["mlflowDatabase"]["enabled"]:
        db = one(docs, "Service", "bigbertha-mlflow-db")
        assert (data["PGHOST"], int(data["PGPORT"])) == (
            "bigbertha-mlflow-db",
            db["spec"]["ports"][0]["port"],
        )
        assert data["PGDATABASE"] == values["mlflowDatabase"]["database"]
    else:
        assert data["PGHOST"] == values["mlflow"]["backendStore"]["postgres"]["host"]


# -- names ---------------------------------------------------------------------------------------


def test_no_two_objects_share_kind_namespace_and_name(
    docs: list[dict[str, Any]], release: Release
) -> None:
    keys = collections.Counter(
        (d["kind"], d["metadata"].get("namespace") or release.namespace, d["metadata"]["name"])
        for d in docs
    )
    assert not [k for k, n in keys.items() if n > 1], [k for k, n in keys.items() if n > 1]


# -- our own wires ----------------------------------------------------------------------------


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor_scrapes_the_exporter_by_port_name(
    docs: list[dict[str, Any]], release: Release
) -> None:
    monitor = one(docs, "ServiceMonitor", "bigbertha-exporter")
    svc = one(docs, "Service", "bigbertha-exporter")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [release.namespace]
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"]
    assert "http-metrics" in port_names


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


def test_alertmanager_config_posts_to_the_webhook_with_its_token(
    docs: list[dict[str, Any]], release: Release
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
        assert url.hostname == f"{service}.{release.namespace}.svc" and url.port == port
        assert url.path == endpoint
        credentials = hook["httpConfig"]["authorization"]["credentials"]
        assert credentials == {"name": auth["name"], "key": auth["key"]}


def test_webhook_url_helper_resolves_to_the_event_source(
    docs: list[dict[str, Any]], env: str, release: Release
) -> None:
    """The NOTES (and the AlertmanagerConfig) use bigbertha.events.webhookUrl."""
    service, port, endpoint, _ = _webhook(docs)
    notes = render_env_raw(env, release)["bigbertha/templates/NOTES.txt"]
    assert f"http://{service}.{release.namespace}.svc:{port}{endpoint}" in notes


def _env_names(docs: list[dict[str, Any]]) -> set[str]:
    names = set(one(docs, "ConfigMap", "bigbertha-settings")["data"])
    containers = [c for _, p in pod_specs(ours(docs)) for c in p["containers"]]
    containers += [tpl["container"] for _, tpl in workflow_containers(docs)]
    names |= {e["name"] for c in containers for e in c.get("env", [])}
    # BIGBERTHA_HOME is where a process keeps local state (settings.HOME), not a setting.
    return {n for n in names if n.startswith("BIGBERTHA_") and n != "BIGBERTHA_HOME"}


def test_settings_env_names_are_real_settings(docs: list[dict[str, Any]]) -> None:
    """The chart's env names match core/settings.py exactly (a typo would be ignored)."""
    sections = Settings.model_fields
    for name in _env_names(docs):
        match = re.fullmatch(r"BIGBERTHA_([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
        assert match, f"{name}: not BIGBERTHA_<SECTION>__<KEY>"
        section, key = match[1].lower(), match[2].lower()
        assert section in sections, f"{name}: no settings section {section!r}"
        model: Any = sections[section].annotation
        for part in key.split("__"):  # a nested section: BIGBERTHA_CHAT__AUTH__ISSUER
            assert part in model.model_fields, f"{name}: settings.{section} has no field {key!r}"
            model = model.model_fields[part].annotation


def test_pods_reach_each_other_through_the_services(
    docs: list[dict[str, Any]], release: Release
) -> None:
    ns = release.namespace
    data = one(docs, "ConfigMap", "bigbertha-settings")["data"]
    assert data["BIGBERTHA_S3__ENDPOINT"] == f"bigbertha-minio.{ns}.svc:9000"
    assert data["BIGBERTHA_MILVUS__URI"] == f"http://bigbertha-milvus.{ns}.svc:19530"
    assert data["BIGBERTHA_MLFLOW__TRACKING_URI"] == f"http://bigbertha-mlflow.{ns}.svc:80"
    assert data["BIGBERTHA_EXPORTER__HOST"] == "0.0.0.0"
    chatbot = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in chatbot["containers"][0]["env"]}
    assert env["BIGBERTHA_REDIS__URL"]["value"].startswith(
        f"redis://:$(REDIS_PASSWORD)@bigbertha-redis.{ns}.svc:6379"
    )


def test_config_changes_roll_the_pods() -> None:
    from tests.chart.render import render

    def checksum(values: dict[str, Any]) -> str:
        deploy = one(render(values), "Deployment", "bigbertha-chatbot")
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"settings": {"chat": {"top_k": 8}}})


def test_the_settings_configmap_loads_as_the_pods_load_it(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value the chart renders parses as the processes parse it: a map printed as Go's
    `map[...]` (promote.guard_metrics) would stop every pod at start."""
    data = one(docs, "ConfigMap", "bigbertha-settings")["data"]
    for name in [n for n in os.environ if n.startswith("BIGBERTHA_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.promote.guard_metrics and settings.promote.gate_metrics
