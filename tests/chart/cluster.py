"""The cluster a render becomes: the pods that will run (the operators' too), the Services in
front of them, the in-cluster addresses every process is configured with, and what the
NetworkPolicies let through. The chart tests check the wires across subchart boundaries here.

Pods the operators create are modelled from the pinned operators' sources (cited per function);
everything else comes straight from the rendered objects.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.chart.render import find, subchart

CLUSTER_DOMAIN = "cluster.local"
# Network schemes (s3://bucket/key, models:/name are not addresses) and their default ports.
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "redis": 6379,
    "rediss": 6379,
    "postgresql": 5432,
    "postgres": 5432,
    "nats": 4222,
    "tcp": None,
    "grpc": None,
}


@dataclass
class Pod:
    """A pod that will exist once the release runs (one per pod template, not per replica)."""

    origin: str  # e.g. "Deployment/bigbertha-chatbot" or "EventBus/bigbertha (argo-events)"
    namespace: str
    labels: dict[str, str]
    containers: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports
    chart: str | None = None  # the subchart that renders it (None: ours, or an operator's)

    def port_numbers(self) -> set[int]:
        numbers = set(self.ports.values())
        for c in self.containers:
            numbers |= {p["containerPort"] for p in c.get("ports") or []}
        return numbers


@dataclass
class Service:
    name: str
    namespace: str
    selector: dict[str, str] | None
    ports: list[dict[str, Any]]
    headless: bool = False
    origin: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def _named_ports(containers: Iterable[dict[str, Any]]) -> dict[str, int]:
    return {
        p["name"]: int(p["containerPort"])
        for c in containers
        for p in c.get("ports") or []
        if p.get("name")
    }


def _pod_template_spec(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        template = doc["spec"]["template"]
    elif kind == "CronJob":
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        template = doc
    else:
        return None
    return template.get("metadata") or {}, template["spec"]


def _workload_pod(doc: dict[str, Any], namespace: str) -> Pod | None:
    found = _pod_template_spec(doc)
    if found is None:
        return None
    meta, spec = found
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    return Pod(
        origin=f"{doc['kind']}/{doc['metadata']['name']}",
        namespace=doc["metadata"].get("namespace") or namespace,
        labels=dict(meta.get("labels") or {}),
        containers=containers,
        volumes=list(spec.get("volumes") or []),
        ports=_named_ports(containers),
        chart=subchart(doc),
    )


def argo_events_labels(kind: str, name: str) -> dict[str, str]:
    """The labels the argo-events v1.9 controller selects its pods by (and puts on them)."""
    controller, label = {
        "EventSource": ("eventsource-controller", "eventsource-name"),
        "Sensor": ("sensor-controller", "sensor-name"),
        "EventBus": ("eventbus-controller", "eventbus-name"),
    }[kind]
    return {"controller": controller, label: name, "owner-name": name}


def _argo_events_pods(docs: list[dict[str, Any]], namespace: str) -> Iterator[Pod]:
    """argo-events v1.9 (chart 2.4.22): the controller's labels win over spec.template's
    (pkg/reconciler/eventsource/controller.go and sensor/controller.go Reconcile;
    eventsource/resource.go buildDeploymentSpec). EventBus pods: spec.jetstream.metadata.labels
    plus getLabels (eventbus/installer/installer.go), ports from installer/jetstream.go."""
    for kind in ("EventSource", "Sensor"):
        for doc in find(docs, kind):
            name = doc["metadata"]["name"]
            template = doc["spec"].get("template") or {}
            container = dict(template.get("container") or {})
            ports = {}
            if kind == "EventSource":
                for svc_port in (doc["spec"].get("service") or {}).get("ports") or []:
                    ports[svc_port.get("name") or str(svc_port["port"])] = int(
                        svc_port.get("targetPort") or svc_port["port"]
                    )
            labels = dict((template.get("metadata") or {}).get("labels") or {})
            labels |= argo_events_labels(kind, name)
            yield Pod(
                origin=f"{kind}/{name} (argo-events controller)",
                namespace=doc["metadata"].get("namespace") or namespace,
                labels=labels,
                containers=[container] if container else [],
                volumes=list(template.get("volumes") or []),
                ports=ports,
            )
    for doc in find(docs, "EventBus"):
        name = doc["metadata"]["name"]
        js = doc["spec"].get("jetstream") or {}
        labels = dict((js.get("metadata") or {}).get("labels") or {})
        labels |= argo_events_labels("EventBus", name)
        yield Pod(
            origin=f"EventBus/{name} (argo-events controller)",
            namespace=doc["metadata"].get("namespace") or namespace,
            labels=labels,
            ports={"client": 4222, "cluster": 6222, "monitor": 8222, "metrics": 7777},
        )


def _workflow_pods(docs: list[dict[str, Any]], namespace: str) -> Iterator[Pod]:
    """Argo Workflows: a step's pod carries the Workflow's podMetadata labels, its template's
    metadata labels and workflows.argoproj.io/workflow (workflow/controller/workflowpod.go)."""
    for wt in find(docs, "WorkflowTemplate"):
        spec = wt["spec"]
        base = dict((spec.get("podMetadata") or {}).get("labels") or {})
        for tpl in spec.get("templates") or []:
            if "container" not in tpl and "script" not in tpl:
                continue
            labels = base | dict((tpl.get("metadata") or {}).get("labels") or {})
            labels["workflows.argoproj.io/workflow"] = f"{wt['metadata']['name']}-x1y2z"
            container = tpl.get("container") or tpl.get("script")
            yield Pod(
                origin=f"WorkflowTemplate/{wt['metadata']['name']}/{tpl['name']} (Workflow step)",
                namespace=wt["metadata"].get("namespace") or namespace,
                labels=labels,
                containers=[container],
                volumes=list(spec.get("volumes") or []) + list(tpl.get("volumes") or []),
            )


def _monitoring_pods(docs: list[dict[str, Any]], namespace: str) -> Iterator[Pod]:
    """prometheus-operator v0.93 (kube-prometheus-stack 88.5.3): spec.podMetadata.labels, then
    the selector labels of pkg/prometheus/server/operator.go and pkg/alertmanager/operator.go
    makeSelectorLabels; the web ports of their statefulset.go."""
    for kind, app, port in (
        ("Prometheus", "prometheus", 9090),
        ("Alertmanager", "alertmanager", 9093),
    ):
        for doc in find(docs, kind):
            name = doc["metadata"]["name"]
            labels = dict((doc["spec"].get("podMetadata") or {}).get("labels") or {})
            labels |= {
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/managed-by": "prometheus-operator",
                "app.kubernetes.io/instance": name,
                app: name,
            }
            if kind == "Prometheus":
                labels |= {"operator.prometheus.io/name": name, "operator.prometheus.io/shard": "0"}
            yield Pod(
                origin=f"{kind}/{name} (prometheus-operator)",
                namespace=doc["metadata"].get("namespace") or namespace,
                labels=labels,
                ports={"web": port, "reloader-web": 8080},
                chart=subchart(doc),
            )


def pods(docs: list[dict[str, Any]], namespace: str) -> list[Pod]:
    """Every pod of the release, plus the cluster DNS every pod resolves names with."""
    found = [p for d in docs if (p := _workload_pod(d, namespace))]
    found += [*_argo_events_pods(docs, namespace), *_workflow_pods(docs, namespace)]
    found += list(_monitoring_pods(docs, namespace))
    found.append(
        Pod(
            origin="CoreDNS (the cluster's)",
            namespace="kube-system",
            labels={"k8s-app": "kube-dns"},
            ports={"dns": 53, "dns-tcp": 53},
        )
    )
    return found


def services(docs: list[dict[str, Any]], namespace: str) -> list[Service]:
    """Rendered Services and those the operators create (argo-events: the EventSource's
    `<name>-eventsource-svc` and the EventBus' headless `eventbus-<name>-js-svc`)."""
    found = [
        Service(
            name=d["metadata"]["name"],
            namespace=d["metadata"].get("namespace") or namespace,
            selector=d["spec"].get("selector"),
            ports=d["spec"].get("ports") or [],
            headless=str(d["spec"].get("clusterIP")) == "None",
            origin=d["__template"],
            labels=d["metadata"].get("labels") or {},
        )
        for d in find(docs, "Service")
    ]
    jetstream_ports = [
        ("tcp-client", 4222),
        ("cluster", 6222),
        ("metrics", 7777),
        ("monitor", 8222),
    ]
    for kind, doc in [(k, d) for k in ("EventSource", "EventBus") for d in find(docs, k)]:
        name = doc["metadata"]["name"]
        if kind == "EventSource" and not doc["spec"].get("service"):
            continue
        found.append(
            Service(
                name=f"{name}-eventsource-svc"
                if kind == "EventSource"
                else f"eventbus-{name}-js-svc",
                namespace=doc["metadata"].get("namespace") or namespace,
                selector=argo_events_labels(kind, name),
                ports=doc["spec"]["service"]["ports"]
                if kind == "EventSource"
                else [{"name": n, "port": p, "targetPort": p} for n, p in jetstream_ports],
                headless=kind == "EventBus",
                origin="argo-events controller",
            )
        )
    return found


# -- selectors --------------------------------------------------------------------------------


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; {} selects all."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_labels(namespace: str) -> dict[str, str]:
    """What the API server puts on every namespace."""
    return {"kubernetes.io/metadata.name": namespace}


def selected_pods(service: Service, all_pods: list[Pod]) -> list[Pod]:
    if not service.selector:
        return []
    return [
        p
        for p in all_pods
        if p.namespace == service.namespace
        and all(p.labels.get(k) == v for k, v in service.selector.items())
    ]


def target_port(service_port: dict[str, Any], pod: Pod) -> int | None:
    """The pod port a Service port sends to (targetPort by number or by container port name)."""
    target = service_port.get("targetPort", service_port["port"])
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    return pod.ports.get(str(target))


# -- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """An in-cluster address some process is configured with, and where it was found."""

    where: str
    host: str
    port: int | None


_URL = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?:[^@/\s\"']*@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)"
    r"(?::(?P<port>\d+))?"
)
_HOST_PORT = re.compile(
    r"(?<![\w./:@-])(?P<host>[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*):(?P<port>\d{2,5})(?![\w.])"
)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Addresses:
    """Finds in-cluster addresses in strings: a host counts when it is a DNS name of this
    cluster (…svc, …svc.cluster.local, <service>.<namespace>) or starts with one of the name
    prefixes of the release (so a misspelt Service name is caught, not skipped)."""

    def __init__(self, namespace: str, prefixes: Iterable[str]) -> None:
        self.namespace = namespace
        self.prefixes = tuple(prefixes)

    def in_cluster(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if _is_ip(host) or host == "localhost":
            return False
        labels = host.split(".")
        if host.endswith(".svc") or host.endswith(f".svc.{CLUSTER_DOMAIN}"):
            return True
        if len(labels) == 2 and labels[1] == self.namespace:
            return True
        return len(labels) == 1 and labels[0].startswith(self.prefixes)

    def scan(self, text: str, where: str) -> Iterator[Address]:
        seen = set()
        for match in _URL.finditer(text):
            host, port = match["host"], match["port"]
            scheme = match["scheme"].lower()
            seen.add(match.start("host"))
            if scheme in DEFAULT_PORTS and self.in_cluster(host):
                number = int(port) if port else DEFAULT_PORTS[scheme]
                yield Address(where, host.lower(), number)
        for match in _HOST_PORT.finditer(text):
            if match.start("host") in seen or not self.in_cluster(match["host"]):
                continue
            yield Address(where, match["host"].lower(), int(match["port"]))

    def pairs(self, values: dict[str, Any], where: str) -> Iterator[Address]:
        """HOST + PORT keys side by side (PGHOST/PGPORT, host/port, address/port)."""
        for key, host in values.items():
            if not isinstance(host, str):
                continue
            stem = None
            for suffix in ("HOST", "_HOST", "host", "address"):
                if key.endswith(suffix):
                    stem = key[: -len(suffix)]
                    port_keys = [stem + p for p in ("PORT", "_PORT", "port", "_TCP_PORT")]
                    port_keys.append("port")
                    break
            if stem is None or not self.in_cluster(host):
                continue
            port = next((values[k] for k in port_keys if k in values), None)
            if port is not None and str(port).isdigit():
                yield Address(f"{where} {key}", host.lower(), int(port))

    def walk(self, node: Any, where: str) -> Iterator[Address]:
        """Every address in a parsed structure: strings, and host/port pairs in its maps."""
        if isinstance(node, dict):
            yield from self.pairs(node, where)
            for key, value in node.items():
                yield from self.walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for item in node:
                yield from self.walk(item, where)
        elif isinstance(node, str):
            yield from self.scan(node, where)
            if "\n" in node and ":" in node:  # a config file inside a ConfigMap
                try:
                    parsed = yaml.load(node, Loader=yaml.CSafeLoader)
                except yaml.YAMLError:
                    return
                if isinstance(parsed, (dict, list)):
                    yield from self.walk(parsed, where)


def _env_addresses(pod: Pod, addresses: Addresses) -> list[Address]:
    found: list[Address] = []
    for c in pod.containers:
        env = {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}
        where = f"{pod.origin} container {c.get('name', '')} env"
        found += addresses.pairs(env, where)
        for name, value in env.items():
            found += addresses.scan(str(value), f"{where} {name}")
    return found


def _configmap_addresses(cm: dict[str, Any], addresses: Addresses) -> list[Address]:
    data = cm.get("data") or {}
    where = f"ConfigMap/{cm['metadata']['name']}"
    found = list(addresses.pairs(data, where))
    for key, value in data.items():
        if not key.endswith(".json"):  # Grafana dashboards: queries and links, no connections
            found += addresses.walk(value, f"{where} {key}")
    return found


def configured_addresses(
    docs: list[dict[str, Any]], all_pods: list[Pod], addresses: Addresses
) -> list[Address]:
    """Addresses in every ConfigMap and in every container's env (values and host/port pairs)."""
    found = [a for cm in find(docs, "ConfigMap") for a in _configmap_addresses(cm, addresses)]
    found += [a for pod in all_pods for a in _env_addresses(pod, addresses)]
    return dedupe(found)


def dedupe(found: Iterable[Address]) -> list[Address]:
    return list(dict.fromkeys(found))


@dataclass
class Resolved:
    service: Service
    port: dict[str, Any]
    pods: list[Pod]


def stateful_pods(docs: list[dict[str, Any]], namespace: str) -> set[tuple[str, str, str]]:
    """(namespace, headless Service, pod name) of every StatefulSet replica: the DNS names
    `<pod>.<service>.<namespace>.svc` that exist."""
    return {
        (
            d["metadata"].get("namespace") or namespace,
            d["spec"]["serviceName"],
            f"{d['metadata']['name']}-{i}",
        )
        for d in find(docs, "StatefulSet")
        for i in range(int(d["spec"].get("replicas", 1)))
    }


def resolve(
    address: Address,
    svcs: list[Service],
    all_pods: list[Pod],
    namespace: str,
    replicas: set[tuple[str, str, str]] = frozenset(),  # type: ignore[assignment]
) -> Resolved | str:
    """The Service and port an address reaches, or why it reaches none."""
    host = address.host.removesuffix(f".{CLUSTER_DOMAIN}")
    labels = host.split(".")
    if labels[-1] == "svc":
        labels = labels[:-1]
    pod_name = None
    if len(labels) == 1:
        name, ns = labels[0], namespace
    elif len(labels) == 2:
        name, ns = labels
    elif len(labels) == 3:  # <pod>.<headless service>.<namespace>
        pod_name, name, ns = labels
    else:
        return f"{address.host}: not a Service or StatefulSet pod name"
    matches = [s for s in svcs if s.name == name and s.namespace == ns]
    if not matches:
        return f"no Service {ns}/{name}"
    service = matches[0]
    if pod_name is not None:
        if not service.headless:
            return f"{pod_name}.{name}: a pod name needs a headless Service, {name} is not"
        if (ns, name, pod_name) not in replicas:
            return f"{pod_name}.{name}: no StatefulSet replica {pod_name} behind Service {name}"
    ports = [p for p in service.ports if address.port is None or int(p["port"]) == address.port]
    if not ports:
        have = sorted(int(p["port"]) for p in service.ports)
        return f"Service {ns}/{name} has no port {address.port} (it has {have})"
    backends = selected_pods(service, all_pods)
    if service.selector and not backends and ns == namespace:
        return f"Service {ns}/{name} selects no pod"  # elsewhere: the cluster's own pods
    return Resolved(service, ports[0], backends)


# -- NetworkPolicies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str


def _isolating(policies: list[dict[str, Any]], pod: Pod, direction: str) -> list[dict[str, Any]]:
    """The policies that select `pod` for a direction ("Ingress" or "Egress")."""
    out = []
    for policy in policies:
        if (policy["metadata"].get("namespace") or pod.namespace) != pod.namespace:
            continue
        spec = policy["spec"]
        types = spec.get("policyTypes") or (
            ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
        )
        if direction in types and selects(spec.get("podSelector") or {}, pod.labels):
            out.append(policy)
    return out


def _peer_matches(peer: dict[str, Any], policy_ns: str, other: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # pod IPs are the CNI's: only pod and namespace selectors count for pods
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False
    return selects(peer.get("podSelector") or {}, other.labels)


def _port_matches(
    rule_ports: list[dict[str, Any]] | None, port: int, protocol: str, dst: Pod
) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        value = entry["port"]
        number = int(value) if str(value).isdigit() else dst.ports.get(str(value))
        if number is not None and number <= port <= int(entry.get("endPort", number)):
            return True
    return False


def _refusal(
    policies: list[dict[str, Any]],
    selected: Pod,
    peer: Pod,
    direction: str,
    port: int,
    protocol: str,
    dst: Pod,
) -> str | None:
    """Why the policies that select `selected` for `direction` refuse `peer` on dst:port, or
    None when none selects it or one of their rules admits it."""
    isolating = _isolating(policies, selected, direction)
    rules, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    if not isolating or any(
        _port_matches(rule.get("ports"), port, protocol, dst)
        and (
            not rule.get(peers)
            or any(_peer_matches(p, selected.namespace, peer) for p in rule[peers])
        )
        for policy in isolating
        for rule in policy["spec"].get(rules) or []
    ):
        return None
    names = sorted(p["metadata"]["name"] for p in isolating)
    return f"{rules} of {selected.origin} ({names}) does not allow it"


def allows(
    policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP"
) -> Verdict:
    """Kubernetes NetworkPolicy semantics for one connection from pod src to dst:port: the
    source's egress and the destination's ingress must both admit it."""
    why = _refusal(policies, src, dst, "Egress", port, protocol, dst) or _refusal(
        policies, dst, src, "Ingress", port, protocol, dst
    )
    return Verdict(why is None, why or "allowed")


def external_egress(policies: list[dict[str, Any]], src: Pod, port: int) -> bool:
    """Whether `src` may open a connection to `port` outside the cluster (an ipBlock or no
    destination restriction): the Kubernetes API server, an external service."""
    egress = _isolating(policies, src, "Egress")
    if not egress:
        return True
    for policy in egress:
        for rule in policy["spec"].get("egress") or []:
            if not _port_matches(rule.get("ports"), port, "TCP", Pod("", "", {})):
                continue
            if not rule.get("to") or any("ipBlock" in peer for peer in rule["to"]):
                return True
    return False


# -- who reads what ---------------------------------------------------------------------------


def _sidecar_labels(pod: Pod) -> list[tuple[str, str]]:
    """(LABEL, LABEL_VALUE) of k8s-sidecar containers (Grafana's dashboard and datasource
    loaders): they read every ConfigMap carrying that label through the API."""
    found = []
    for c in pod.containers:
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        if "k8s-sidecar" in str(c.get("image")) and env.get("LABEL"):
            found.append((env["LABEL"], env.get("LABEL_VALUE") or ""))
    return found


def consumed_configmaps(pod: Pod, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ConfigMaps whose data reaches the pod's processes (env, volumes, sidecar loaders)."""
    names = set()
    for c in pod.containers:
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                names.add(src["configMapRef"]["name"])
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                names.add(ref["name"])
    for v in pod.volumes:
        if "configMap" in v:
            names.add(v["configMap"]["name"])
        for source in (v.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                names.add(source["configMap"]["name"])
    maps = [
        cm
        for cm in find(docs, "ConfigMap")
        if (cm["metadata"].get("namespace") or pod.namespace) == pod.namespace
    ]
    labelled = _sidecar_labels(pod)
    return [
        cm
        for cm in maps
        if cm["metadata"]["name"] in names
        or any((cm["metadata"].get("labels") or {}).get(k) == v for k, v in labelled)
    ]


def pod_addresses(pod: Pod, docs: list[dict[str, Any]], addresses: Addresses) -> list[Address]:
    """Every in-cluster address the pod's processes are configured with."""
    found = _env_addresses(pod, addresses)
    for cm in consumed_configmaps(pod, docs):
        found += _configmap_addresses(cm, addresses)
    return dedupe(found)


def picks(owner: dict[str, Any], prefix: str, obj: dict[str, Any], namespace: str) -> bool:
    """Whether a Prometheus or Alertmanager picks up `obj` through its `<prefix>Selector` and
    `<prefix>NamespaceSelector` (prometheus-operator: a nil selector selects nothing, {} all; a
    nil namespace selector means the owner's namespace only, {} every namespace)."""
    spec = owner["spec"]
    namespace_selector = spec.get(f"{prefix}NamespaceSelector")
    obj_ns = obj["metadata"].get("namespace") or namespace
    if namespace_selector is None:
        in_namespace = obj_ns == (owner["metadata"].get("namespace") or namespace)
    else:
        in_namespace = selects(namespace_selector, namespace_labels(obj_ns))
    return in_namespace and selects(
        spec.get(f"{prefix}Selector"), obj["metadata"].get("labels") or {}
    )


def _events_wires(docs: list[dict[str, Any]], pod_of: Any) -> Iterator[tuple[Pod, Address]]:
    """EventSources and Sensors to their EventBus, the MinIO EventSource to MinIO, and the
    JetStream servers of a clustered bus to each other."""
    for kind in ("EventSource", "Sensor"):
        for doc in find(docs, kind):
            pod = pod_of(kind, doc["metadata"]["name"], "argo-events controller")
            bus = doc["spec"].get("eventBusName", "default")
            yield pod, Address(f"{pod.origin} eventBusName", f"eventbus-{bus}-js-svc", 4222)
            for name, minio in (doc["spec"].get("minio") or {}).items():
                host, _, port = minio["endpoint"].partition(":")
                where = f"{pod.origin} minio.{name}.endpoint"
                yield pod, Address(where, host, int(port or 443))
    for bus in find(docs, "EventBus"):
        if int(bus["spec"]["jetstream"].get("replicas", 3)) > 2:
            pod = pod_of("EventBus", bus["metadata"]["name"], "argo-events controller")
            svc = f"eventbus-{bus['metadata']['name']}-js-svc"
            yield pod, Address(f"{pod.origin} cluster routes", svc, 6222)


def _monitoring_wires(
    docs: list[dict[str, Any]], pod_of: Any, svcs: list[Service], namespace: str
) -> Iterator[tuple[Pod, Address]]:
    """Alertmanager to the webhooks of the AlertmanagerConfigs it picks; Prometheus to its
    Alertmanagers and to the Services of the ServiceMonitors it picks."""
    for am in find(docs, "Alertmanager"):
        pod = pod_of("Alertmanager", am["metadata"]["name"], "prometheus-operator")
        for config in find(docs, "AlertmanagerConfig"):
            if not picks(am, "alertmanagerConfig", config, namespace):
                continue
            for receiver in config["spec"].get("receivers") or []:
                for hook in receiver.get("webhookConfigs") or []:
                    where = f"AlertmanagerConfig/{config['metadata']['name']} {receiver['name']}"
                    for address in Addresses(namespace, ()).scan(hook["url"], where):
                        yield pod, address
    for prom in find(docs, "Prometheus"):
        pod = pod_of("Prometheus", prom["metadata"]["name"], "prometheus-operator")
        for ref in (prom["spec"].get("alerting") or {}).get("alertmanagers") or []:
            ports = [
                p["port"]
                for s in svcs
                if (s.name, s.namespace) == (ref["name"], ref["namespace"])
                for p in s.ports
                if p.get("name") == ref["port"]
            ]
            where = f"{pod.origin} alerting {ref['name']}:{ref['port']}"
            host = f"{ref['name']}.{ref['namespace']}"
            yield pod, Address(where, host, ports[0] if ports else None)
        for monitor in find(docs, "ServiceMonitor"):
            if not picks(prom, "serviceMonitor", monitor, namespace):
                continue
            mon_ns = monitor["metadata"].get("namespace") or namespace
            names = (monitor["spec"].get("namespaceSelector") or {}).get("matchNames") or [mon_ns]
            where = f"ServiceMonitor/{monitor['metadata']['name']}"
            for svc in svcs:
                if svc.namespace in names and selects(monitor["spec"]["selector"], svc.labels):
                    for endpoint in monitor["spec"].get("endpoints") or []:
                        for port in svc.ports:
                            if endpoint.get("port") in (port.get("name"), None):
                                host = f"{svc.name}.{svc.namespace}"
                                yield pod, Address(where, host, int(port["port"]))


def declared_wires(
    docs: list[dict[str, Any]], all_pods: list[Pod], svcs: list[Service], namespace: str
) -> list[tuple[Pod, Address]]:
    """Connections the custom resources declare, from the pods the operators make of them."""
    by_origin = {p.origin: p for p in all_pods}

    def pod_of(kind: str, name: str, operator: str) -> Pod:
        return by_origin[f"{kind}/{name} ({operator})"]

    return [*_events_wires(docs, pod_of), *_monitoring_wires(docs, pod_of, svcs, namespace)]
