"""Production survives disruption (issue 23, item 4): a node drain or an upgrade never takes all
the pods of a replicated workload at once, and the pods of one are spread over nodes.

Every workload of the prod render that runs more than one pod must be selected by a
PodDisruptionBudget of the same render that lets one pod go, and must spread its pods (pod
anti-affinity or topology spread constraints that select its own pods). The workloads are the
Deployments and StatefulSets, and the custom resources whose operator makes a StatefulSet:
Prometheus and Alertmanager (prometheus-operator) and the JetStream EventBus (argo-events).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tests.chart.render import Release, find, one, render_env, replicas, subchart

# The pod labels prometheus-operator v0.93 gives a Prometheus' and an Alertmanager's pods, over
# spec.podMetadata.labels (its selector labels win): makeSelectorLabels in
# pkg/prometheus/server/operator.go (plus operator.prometheus.io/shard, one StatefulSet per
# shard, pkg/prometheus/server/statefulset.go) and pkg/alertmanager/operator.go. The
# app.kubernetes.io/version label it adds too is left out: no selector may depend on it.
MANAGED_BY = {"app.kubernetes.io/managed-by": "prometheus-operator"}


def _prometheus_labels(name: str, shard: int) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "prometheus",
        "app.kubernetes.io/instance": name,
        "operator.prometheus.io/name": name,
        "operator.prometheus.io/shard": str(shard),
        "prometheus": name,
    }


def _alertmanager_labels(name: str) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": "alertmanager",
        "app.kubernetes.io/instance": name,
        "alertmanager": name,
    }


# The pod labels the argo-events v1.9 controller gives a JetStream EventBus' StatefulSet pods,
# over spec.jetstream.metadata.labels: getLabels in pkg/reconciler/eventbus/installer/
# installer.go (`owner-name` is v1alpha1.LabelOwnerName), merged in buildStatefulSetSpec in
# pkg/reconciler/eventbus/installer/jetstream.go; replicas default to 3 (JetStreamBus.GetReplicas).
def _eventbus_labels(name: str) -> dict[str, str]:
    return {"controller": "eventbus-controller", "eventbus-name": name, "owner-name": name}


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    namespace: str
    replicas: int
    labels: dict[str, str]  # of its pods
    pod: dict[str, Any]  # the pod spec fields that place its pods (affinity, spread)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def workloads(docs: list[dict[str, Any]], release: Release) -> list[Workload]:
    """Every workload of a render, with the labels its pods get."""
    found = []
    for d in docs:
        kind, meta, spec = d["kind"], d["metadata"], d.get("spec") or {}
        namespace = meta.get("namespace", release.namespace)
        name = meta["name"]
        if kind in ("Deployment", "StatefulSet"):
            template = spec["template"]
            found.append(
                Workload(
                    kind,
                    name,
                    namespace,
                    replicas(docs, d),  # autoscaled: its minReplicas
                    template["metadata"].get("labels") or {},
                    template["spec"],
                )
            )
        elif kind in ("Prometheus", "Alertmanager") and d["apiVersion"].startswith(
            "monitoring.coreos.com/"
        ):
            extra = (spec.get("podMetadata") or {}).get("labels") or {}
            shards = spec.get("shards", 1) if kind == "Prometheus" else 1
            for shard in range(shards):
                own = (
                    _prometheus_labels(name, shard)
                    if kind == "Prometheus"
                    else _alertmanager_labels(name)
                )
                found.append(
                    Workload(
                        kind,
                        name if shards == 1 else f"{name} (shard {shard})",
                        namespace,
                        spec.get("replicas", 1),
                        {**extra, **own},
                        spec,
                    )
                )
        elif kind == "EventBus" and "jetstream" in spec:
            js = spec["jetstream"]
            extra = (js.get("metadata") or {}).get("labels") or {}
            found.append(
                Workload(
                    kind,
                    name,
                    namespace,
                    js.get("replicas", 3),
                    {**extra, **_eventbus_labels(name)},
                    js,
                )
            )
    return found


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches a pod's labels (matchLabels and matchExpressions)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _scaled(value: int | str, replicas: int) -> int:
    """An int-or-percent of a PDB, as the disruption controller scales it (rounding up)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * replicas / 100)
    return int(value)


def disruptions_allowed(pdb: dict[str, Any], replicas: int) -> int:
    """How many of `replicas` healthy pods the budget lets a drain evict."""
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        return _scaled(spec["maxUnavailable"], replicas)
    if "minAvailable" in spec:
        return replicas - _scaled(spec["minAvailable"], replicas)
    return 0  # neither set: counted as blocking


def _covering(w: Workload, pdbs: list[dict[str, Any]], release: Release) -> list[dict[str, Any]]:
    return [
        p
        for p in pdbs
        if p["metadata"].get("namespace", release.namespace) == w.namespace
        and selects(p["spec"].get("selector"), w.labels)
    ]


def _replicated(release: Release) -> list[Workload]:
    return [w for w in workloads(render_env("prod", release), release) if w.replicas > 1]


def test_the_prod_workloads_are_all_found(release: Release) -> None:
    """The walk above sees the replicated workloads of every kind (custom resources included)."""
    replicated = _replicated(release)
    kinds = {w.kind for w in replicated}
    assert kinds == {"Deployment", "StatefulSet", "Prometheus", "Alertmanager", "EventBus"}
    names = {str(w) for w in replicated}
    for suffix in ("chatbot", "exporter", "vllm", "minio", "etcd", "milvus-querynode", "mlflow"):
        assert any(n.endswith(f"-{suffix}") for n in names), f"no *-{suffix} in {sorted(names)}"
    assert len(replicated) >= 12, sorted(names)


def test_every_replicated_prod_workload_has_a_disruption_budget(release: Release) -> None:
    docs = render_env("prod", release)
    pdbs = find(docs, "PodDisruptionBudget")
    uncovered, blocking, doubled = [], [], []
    for w in _replicated(release):
        covering = _covering(w, pdbs, release)
        if not covering:
            uncovered.append(str(w))
        elif len(covering) > 1:  # the eviction API refuses a pod under two budgets
            doubled.append(f"{w}: {[p['metadata']['name'] for p in covering]}")
        elif disruptions_allowed(covering[0], w.replicas) < 1:
            blocking.append(f"{w} ({covering[0]['metadata']['name']})")
    assert not uncovered, f"replicated workloads without a PodDisruptionBudget: {uncovered}"
    assert not doubled, f"pods under more than one PodDisruptionBudget: {doubled}"
    assert not blocking, f"PodDisruptionBudgets that block every drain: {blocking}"


def test_every_disruption_budget_selects_a_workload(release: Release) -> None:
    """A budget whose selector drifted from its pods' labels protects nothing."""
    for env in ("default", "prod"):
        docs = render_env(env, release)
        all_workloads = workloads(docs, release)
        stray = [
            f"{p['metadata']['name']} ({p['__template']})"
            for p in find(docs, "PodDisruptionBudget")
            if not any(_covering(w, [p], release) and w.replicas > 1 for w in all_workloads)
        ]
        assert not stray, f"{env}: PodDisruptionBudgets selecting no replicated workload: {stray}"


def _spreads(w: Workload) -> bool:
    """Pod anti-affinity or a topology spread constraint over nodes, selecting its own pods."""
    anti = (w.pod.get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [
        t.get("podAffinityTerm", t)
        for key in (
            "requiredDuringSchedulingIgnoredDuringExecution",
            "preferredDuringSchedulingIgnoredDuringExecution",
        )
        for t in anti.get(key) or []
    ]
    terms += w.pod.get("topologySpreadConstraints") or []
    return any(
        t.get("topologyKey") in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
        and selects(t.get("labelSelector"), w.labels)
        for t in terms
    )


def test_every_replicated_prod_workload_spreads_its_pods(release: Release) -> None:
    lumped = [str(w) for w in _replicated(release) if not _spreads(w)]
    assert not lumped, (
        f"replicated workloads without pod anti-affinity or topology spread over nodes: {lumped}"
    )


def test_the_chatbot_service_keeps_a_session_on_its_pod(release: Release) -> None:
    """Streamlit's websocket reconnects must land on the pod holding the session."""
    for env in ("default", "prod"):
        svc = one(render_env(env, release), "Service", "bigbertha-chatbot")
        assert subchart(svc) is None
        assert svc["spec"]["sessionAffinity"] == "ClientIP", env


def _bytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    scale = {"": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "Ki": 2**10, "Mi": 2**20}
    scale |= {"Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "B": 1}
    return float(number) * scale[unit]


def test_prod_prometheus_keeps_its_retention_on_a_volume(release: Release) -> None:
    """A 30-day retention on an emptyDir would lose it at every reschedule; the size-based
    retention keeps the TSDB inside its volume; requests and limits keep it schedulable."""
    prom = find(render_env("prod", release), "Prometheus")[0]["spec"]
    claim = prom["storage"]["volumeClaimTemplate"]["spec"]
    size = _bytes(claim["resources"]["requests"]["storage"])
    assert prom["retention"] == "30d"
    assert 0 < _bytes(prom["retentionSize"]) <= 0.9 * size, "WAL and compaction need headroom"
    resources = prom["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
