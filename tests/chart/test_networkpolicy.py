"""The NetworkPolicies, evaluated with Kubernetes' semantics against the labels of the pods that
will exist (the operators' included: EventSource, Sensor, EventBus, Workflow step, Prometheus,
Alertmanager pods): every wire of the release is allowed, and what should be blocked is."""

from __future__ import annotations

from typing import Any

from tests.chart import cluster
from tests.chart.render import Release, find, one, ours, workflow_containers

OUTSIDER = "intruder"  # a namespace of someone else's workloads


def _policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return find(docs, "NetworkPolicy")


def _pod(pods: list[cluster.Pod], origin: str) -> cluster.Pod:
    (found,) = [p for p in pods if p.origin.startswith(origin)]
    return found


def _wires(
    docs: list[dict[str, Any]], release: Release
) -> list[tuple[cluster.Pod, cluster.Address]]:
    """Every connection the release makes: from each pod to each address it is configured
    with, and the ones its custom resources declare."""
    pods = cluster.pods(docs, release.namespace)
    services = cluster.services(docs, release.namespace)
    addresses = cluster.Addresses(release.namespace, ("bigbertha-", f"{release.name}-"))
    wires = [(pod, a) for pod in pods for a in cluster.pod_addresses(pod, docs, addresses)]
    wires += cluster.declared_wires(docs, pods, services, release.namespace)
    return wires


# What a process reads of the shared settings ConfigMap when it reads only part of it: the
# exporter serves Redis aggregates and nothing else (telemetry/exporter.py reads
# settings.redis and settings.exporter), so its Milvus, S3 and MLflow settings are no wires.
SECTIONS_READ = {
    "Deployment/bigbertha-exporter": ("REDIS", "EXPORTER"),
    # The inference tier's init step and sidecar: the registry and object storage
    # (src/bigbertha/serving reads settings.mlflow, s3, serving, chat and log).
    "Deployment/bigbertha-vllm": ("MLFLOW", "S3", "SERVING", "CHAT", "LOG"),
}


def _used(pod: cluster.Pod, address: cluster.Address) -> bool:
    sections = SECTIONS_READ.get(pod.origin)
    if sections is None or "ConfigMap/bigbertha-settings BIGBERTHA_" not in address.where:
        return True
    section = address.where.split("BIGBERTHA_", 1)[1].split("__", 1)[0]
    return section in sections


def test_every_wire_of_the_release_is_allowed(
    cluster_docs: list[dict[str, Any]], release: Release
) -> None:
    docs = cluster_docs
    pods = cluster.pods(docs, release.namespace)
    services = cluster.services(docs, release.namespace)
    replicas = cluster.stateful_pods(docs, release.namespace)
    policies = _policies(docs)
    checked, blocked = set(), []
    for src, address in _wires(docs, release):
        resolved = cluster.resolve(address, services, pods, release.namespace, replicas)
        if isinstance(resolved, str) or not _used(src, address):
            continue  # test_wiring reports addresses to nowhere
        for dst in resolved.pods:
            port = cluster.target_port(resolved.port, dst)
            if port is None or port not in dst.port_numbers():
                continue  # not an endpoint of that Service port (e.g. a `helm test` pod)
            verdict = cluster.allows(policies, src, dst, port)
            checked.add((src.origin, dst.origin))
            if not verdict.allowed:
                blocked.append(
                    f"{src.origin} -> {dst.origin}:{port} ({address.where}): {verdict.why}"
                )
    assert not blocked, "\n".join(blocked)
    expected = [
        ("Deployment/bigbertha-chatbot", "Deployment/bigbertha-milvus"),
        ("Deployment/bigbertha-chatbot", "StatefulSet/bigbertha-redis"),
        ("Deployment/bigbertha-exporter", "StatefulSet/bigbertha-redis"),
        ("Deployment/bigbertha-mlflow", "/bigbertha-minio"),
        ("EventSource/bigbertha-minio", "EventBus/bigbertha"),
        ("Sensor/bigbertha-retrain", "EventBus/bigbertha"),
        ("WorkflowTemplate/bigbertha-ingest/ingest", "Deployment/bigbertha-milvus"),
        ("WorkflowTemplate/bigbertha-finetune/promote", "Deployment/bigbertha-mlflow"),
        ("WorkflowTemplate/bigbertha-finetune/prepare-data", "StatefulSet/bigbertha-redis"),
        ("Alertmanager/", "EventSource/bigbertha-alerts"),
        ("Prometheus/", "Deployment/bigbertha-exporter"),
    ]
    if find(docs, "StatefulSet", "bigbertha-mlflow-db"):
        expected.append(("Deployment/bigbertha-mlflow", "StatefulSet/bigbertha-mlflow-db"))
    missing = [
        pair
        for pair in expected
        if not any(s.startswith(pair[0]) and pair[1] in d for s, d in checked)
    ]
    assert not missing, f"wires the model did not derive: {missing}"


def test_the_loops_wires_are_allowed(cluster_docs: list[dict[str, Any]], release: Release) -> None:
    """The two loops, hop by hop: Alertmanager -> webhook EventSource; EventSources and Sensors
    -> EventBus; the MinIO EventSource -> MinIO; Workflow steps -> Milvus, MinIO, MLflow, Redis;
    Prometheus -> exporter; every BigBertha pod -> the cluster DNS. Prometheus and Alertmanager
    are the release's, or the cluster's own in another namespace."""
    docs = cluster_docs
    pods = cluster.pods(docs, release.namespace)
    policies = _policies(docs)

    def allowed(src: str, dst: str, port: int, protocol: str = "TCP") -> None:
        verdict = cluster.allows(policies, _pod(pods, src), _pod(pods, dst), port, protocol)
        assert verdict.allowed, f"{src} -> {dst}:{port}: {verdict.why}"

    milvus = (
        next(p.origin for p in pods if p.chart == "milvus" and "proxy" in p.origin)
        if any(p.chart == "milvus" and "proxy" in p.origin for p in pods)
        else "Deployment/bigbertha-milvus-standalone"
    )
    minio = next(
        p.origin
        for p in pods
        if p.chart == "minio" and p.origin.startswith(("Deployment/", "StatefulSet/"))
    )
    allowed("Alertmanager/", "EventSource/bigbertha-alerts", 12000)
    for source in (
        "EventSource/bigbertha-alerts",
        "EventSource/bigbertha-minio",
        "Sensor/bigbertha-ingest",
        "Sensor/bigbertha-retrain",
    ):
        allowed(source, "EventBus/bigbertha", 4222)
    allowed("EventSource/bigbertha-minio", minio, 9000)
    for step in (
        "bigbertha-ingest/ingest",
        "bigbertha-finetune/finetune",
        "bigbertha-finetune/promote",
    ):
        allowed(f"WorkflowTemplate/{step}", milvus, 19530)
        allowed(f"WorkflowTemplate/{step}", minio, 9000)
        allowed(f"WorkflowTemplate/{step}", "Deployment/bigbertha-mlflow", 5000)
    allowed("WorkflowTemplate/bigbertha-finetune/prepare-data", "StatefulSet/bigbertha-redis", 6379)
    allowed("Prometheus/", "Deployment/bigbertha-exporter", 8080)
    for pod in pods:
        if pod.labels.get("app.kubernetes.io/part-of") == "bigbertha":
            for protocol in ("UDP", "TCP"):
                allowed(pod.origin, "CoreDNS", 53, protocol)


def test_what_should_be_blocked_is(docs: list[dict[str, Any]], release: Release) -> None:
    pods = cluster.pods(docs, release.namespace)
    policies = _policies(docs)
    stranger = cluster.Pod("a pod of another tenant", OUTSIDER, {"app": "x"})
    neighbour = cluster.Pod("an unrelated pod here", release.namespace, {"app": "x"})

    def blocked(src: cluster.Pod | str, dst: str, port: int) -> None:
        source = src if isinstance(src, cluster.Pod) else _pod(pods, src)
        verdict = cluster.allows(policies, source, _pod(pods, dst), port)
        assert not verdict.allowed, f"{source.origin} -> {dst}:{port} is open"

    database = any(p.origin == "StatefulSet/bigbertha-mlflow-db" for p in pods)

    def first(chart: str) -> str:
        return next(
            p.origin
            for p in pods
            if p.chart == chart and p.origin.startswith(("Deployment/", "StatefulSet/"))
        )

    services = {first("milvus"): 19530, first("minio"): 9000, first("etcd"): 2379}
    services["Deployment/bigbertha-mlflow"] = 5000
    for intruder in (stranger, neighbour):
        blocked(intruder, "StatefulSet/bigbertha-redis", 6379)
        if database:
            blocked(intruder, "StatefulSet/bigbertha-mlflow-db", 5432)
        blocked(intruder, "EventSource/bigbertha-alerts", 12000)  # only Alertmanager posts
        blocked(intruder, "EventBus/bigbertha", 4222)
        blocked(intruder, "Deployment/bigbertha-exporter", 8080)
        for service, port in services.items():  # the data services
            blocked(intruder, service, port)
    blocked("Deployment/bigbertha-chatbot", "EventBus/bigbertha", 4222)
    if database:
        blocked("Deployment/bigbertha-chatbot", "StatefulSet/bigbertha-mlflow-db", 5432)
    blocked("WorkflowTemplate/bigbertha-ingest/ingest", "Deployment/bigbertha-chatbot", 8501)
    blocked("Deployment/bigbertha-exporter", "Deployment/bigbertha-chatbot", 8501)
    # Leaving the cluster: only workflow steps, Sensors and the inference tier (its sidecar
    # rolls its Deployment onto a merged champion) reach the API server, and a chatbot with
    # sign-on its OpenID provider (only at chatbot.auth.providerEgress); nobody else gets
    # internet egress (models come from object storage).
    chatbot = next(p for p in pods if p.origin == "Deployment/bigbertha-chatbot")
    signs_on = any(
        e.get("name") == "BIGBERTHA_CHAT__AUTH__ENABLED"
        for c in chatbot.containers
        for e in c.get("env") or []
    )
    for pod in ours_pods(pods):
        api = cluster.external_egress(policies, pod, 443)
        needs_api = pod.origin.startswith(
            ("WorkflowTemplate/", "Sensor/", "Deployment/bigbertha-vllm")
        ) or (pod is chatbot and signs_on)
        assert api == needs_api, f"{pod.origin}: external egress to 443 is {api}"
    if signs_on:  # to the provider's peers, not the internet
        (rule,) = [
            r
            for r in one(docs, "NetworkPolicy", "bigbertha-chatbot")["spec"]["egress"]
            if any("ipBlock" in peer for peer in r.get("to") or [])
        ]
        assert rule["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]


def ours_pods(pods: list[cluster.Pod]) -> list[cluster.Pod]:
    return [p for p in pods if p.labels.get("app.kubernetes.io/part-of") == "bigbertha"]


def test_every_bigbertha_pod_is_denied_by_default(
    docs: list[dict[str, Any]], release: Release
) -> None:
    """The default-deny policy selects every pod we run (the operator-made ones too)."""
    (deny,) = [
        p for p in find(docs, "NetworkPolicy") if p["metadata"]["name"] == "bigbertha-default-deny"
    ]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny["spec"]
    pods = ours_pods(cluster.pods(docs, release.namespace))
    origins = {p.origin.split(" (")[0].split("/")[0] for p in pods}
    assert {
        "Deployment",
        "StatefulSet",
        "EventBus",
        "EventSource",
        "Sensor",
        "WorkflowTemplate",
    } <= origins
    for pod in pods:
        assert cluster.selects(deny["spec"]["podSelector"], pod.labels), pod.origin
    steps = {name for name, _ in workflow_containers(ours(docs))}
    assert steps, "no workflow step modelled"


def test_the_evaluator_follows_kubernetes_semantics() -> None:
    """Named ports resolve on the destination, namespaceSelector needs the namespace labels,
    an empty podSelector in a peer is its own namespace only, ipBlocks never match pods."""
    web = cluster.Pod("web", "a", {"app": "web"}, ports={"http": 8080})
    client = cluster.Pod("client", "a", {"app": "client"})
    other = cluster.Pod("other", "b", {"app": "client"})

    def policy(spec: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"metadata": {"name": "p", "namespace": "a"}, "spec": spec}]

    named = policy(
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "http"}]}],
        }
    )
    assert cluster.allows(named, client, web, 8080).allowed
    assert not cluster.allows(named, client, web, 9090).allowed
    assert not cluster.allows(named, other, web, 8080).allowed, "podSelector {} is this namespace"
    by_ns = policy(
        {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}
                    ]
                }
            ],
        }
    )
    assert cluster.allows(by_ns, other, web, 8080).allowed
    assert not cluster.allows(by_ns, client, web, 8080).allowed
    ip = policy(
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}],
        }
    )
    assert not cluster.allows(ip, client, web, 8080).allowed
    assert cluster.external_egress(ip, client, 443)
    expr = policy(
        {
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
            },
            "policyTypes": ["Ingress"],
        }
    )
    assert (
        not cluster.allows(expr, client, web, 8080).allowed
        and cluster.allows(expr, web, client, 1).allowed
    )
