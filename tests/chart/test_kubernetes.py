"""Every rendered object of the whole release (subcharts included) is valid Kubernetes: built-in
kinds against the API schemas (strict), custom resources against the pinned CRD schemas with
unknown fields rejected, every namespaced object in the release namespace. Our own objects also
run restricted pod security, least-privilege RBAC and carry the standard labels (the subcharts'
pods are held to checkov's checks instead: test_tools.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart import crds
from tests.chart.render import (
    CUSTOM_KINDS,
    ROOT,
    Release,
    clean,
    find,
    installs,
    one,
    ours,
    pod_specs,
    render,
    replicas,
    subchart,
    workflow_containers,
)

KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _is_custom(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"] in CUSTOM_KINDS


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_builtin_kinds_are_valid_strict(docs: list[dict[str, Any]], kube_version: str) -> None:
    errors = []
    for doc in docs:
        if _is_custom(doc):
            continue
        try:
            kubernetes_validate.validate(clean(doc), kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, errors


def _cr_errors(shared: Path, doc: dict[str, Any]) -> list[str]:
    return crds.errors(shared, doc)


def test_custom_resources_match_the_crd_schemas(
    env: str, docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    customs = [d for d in docs if _is_custom(d)]
    assert {d["kind"] for d in customs} >= {"EventBus", "EventSource", "Sensor", "WorkflowTemplate"}
    if installs(env, "kube-prometheus-stack"):
        assert {d["kind"] for d in customs if subchart(d)} >= {"Prometheus", "Alertmanager"}
    errors = [e for doc in customs for e in _cr_errors(shared_dir, doc)]
    assert not errors, errors


def test_unknown_fields_in_custom_resources_are_rejected(
    default_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    for kind in ("Sensor", "EventSource", "WorkflowTemplate", "ServiceMonitor", "Prometheus"):
        doc = copy.deepcopy(find(default_docs, kind)[0])
        doc["spec"]["triggerz" if kind == "Sensor" else "unknownField"] = True
        assert _cr_errors(shared_dir, doc), f"{kind}: an unknown field went unnoticed"


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["containers"] + (pod.get("initContainers") or [])


def test_pods_run_restricted(docs: list[dict[str, Any]]) -> None:
    """Pod Security Standard `restricted`, read-only root and no service links, for every pod
    and every workflow step of ours."""
    docs = ours(docs)
    pods = list(pod_specs(docs))
    pods += [
        (name, {**wt["spec"], "containers": [tpl["container"]]})
        for wt in find(docs, "WorkflowTemplate")
        for name, tpl in workflow_containers([wt])
    ]
    assert len(pods) >= 8
    for name, pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", (
            name
        )
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "resources" in c and c["resources"].get("limits", {}).get("memory"), name
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["image"].split("/")[-1].startswith("bigbertha"):
                assert {"/tmp", "/cache"} <= mounts, f"{name}: writable caches must be emptyDirs"
        service_links = json.loads(pod["podSpecPatch"]) if "podSpecPatch" in pod else pod
        assert service_links["enableServiceLinks"] is False, name


def test_service_account_tokens_only_where_the_api_is_called(docs: list[dict[str, Any]]) -> None:
    docs = ours(docs)
    for name, pod in pod_specs(docs):
        assert pod["automountServiceAccountToken"] is False, f"{name} mounts an unused token"
        assert pod["enableServiceLinks"] is False, name
    accounts = {d["metadata"]["name"]: d for d in find(docs, "ServiceAccount")}
    with_token = {n for n, d in accounts.items() if d.get("automountServiceAccountToken", True)}
    # Workflow steps (the Argo executor reports results) and Sensors (they submit Workflows).
    assert with_token == {"bigbertha-workflows", "bigbertha-events"}


def test_rbac_is_least_privilege(docs: list[dict[str, Any]]) -> None:
    docs = ours(docs)
    rules = {d["metadata"]["name"]: d["rules"] for d in find(docs, "Role")}
    assert find(docs, "ClusterRole") == []
    assert rules["bigbertha-workflows"] == [
        {
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtaskresults"],
            "verbs": ["create", "patch"],
        }
    ]
    events = {tuple(r["resources"]): r for r in rules["bigbertha-events"]}
    assert set(events[("workflows",)]["verbs"]) == {"create", "get", "list"}
    assert events[("workflowtemplates",)]["verbs"] == ["get"]
    assert set(events[("workflowtemplates",)]["resourceNames"]) == {
        "bigbertha-ingest",
        "bigbertha-finetune",
    }
    for role_rules in rules.values():
        for rule in role_rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_standard_labels_everywhere(docs: list[dict[str, Any]]) -> None:
    docs = ours(docs)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"
    for doc in find(docs, "Deployment") + find(docs, "StatefulSet"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }, "selectors are immutable: no version"


CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "PriorityClass",
    "StorageClass",
    "Namespace",
    "PersistentVolume",
}


def test_objects_live_in_the_release_namespace(
    docs: list[dict[str, Any]], release: Release
) -> None:
    """Ours set it from .Release.Namespace, never hard-coded; a subchart object either does the
    same or leaves it out (Helm installs it into the release namespace). One exception, by
    design: kube-prometheus-stack's control-plane exporters put the Services that select the
    kube-system pods (CoreDNS, scheduler, ...) into kube-system (templates/exporters/)."""
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']} ({doc['__template']})"
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED:
            assert namespace is None, name
        elif subchart(doc) is None:
            assert namespace == release.namespace, name
        elif "/kube-prometheus-stack/templates/exporters/" in doc["__template"] and (
            namespace == "kube-system"
        ):
            assert doc["kind"] == "Service", name
        else:
            assert namespace in (None, release.namespace), name


def test_registry_override_and_pull_secrets_reach_every_pod() -> None:
    docs = ours(
        render(
            {
                "global": {
                    "imageRegistry": "mirror.corp.internal:5000",
                    "imagePullSecrets": ["mirror-pull"],
                }
            }
        )
    )
    images = [c["image"] for _, pod in pod_specs(docs) for c in _containers(pod)]
    images += [tpl["container"]["image"] for _, tpl in workflow_containers(docs)]
    assert images and all(i.startswith("mirror.corp.internal:5000/") for i in images), images
    for name, pod in pod_specs(docs):
        assert pod["imagePullSecrets"] == [{"name": "mirror-pull"}], name
    for wt in find(docs, "WorkflowTemplate"):
        assert wt["spec"]["imagePullSecrets"] == [{"name": "mirror-pull"}]
    for kind in ("Sensor", "EventSource"):
        for doc in find(docs, kind):
            assert doc["spec"]["template"]["imagePullSecrets"] == [{"name": "mirror-pull"}]


def test_image_tags_default_to_the_app_version(default_docs: list[dict[str, Any]]) -> None:
    images = [c["image"] for _, pod in pod_specs(default_docs) for c in _containers(pod)]
    ours = [i for i in images if "/bigbertha/" in i]
    app_version = yaml.safe_load((ROOT / "Chart.yaml").read_text())["appVersion"]
    assert ours and all(i.endswith(f":{app_version}") for i in ours), ours


def test_prod_chatbot_survives_a_node_drain(prod_docs: list[dict[str, Any]]) -> None:
    pdb = one(prod_docs, "PodDisruptionBudget", "bigbertha-chatbot")
    deploy = one(prod_docs, "Deployment", "bigbertha-chatbot")
    assert replicas(prod_docs, deploy) > 1 and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    # The chart defaults run one pod of each Deployment (the EventBus runs 3 JetStream servers).
    no_pdb = find(ours(render({})), "PodDisruptionBudget")
    assert [p["metadata"]["name"] for p in no_pdb] == ["bigbertha-eventbus"], (
        "one replica: a PDB would block drains"
    )


def test_chatbot_ingress_routes_to_its_service() -> None:
    docs = render(
        {
            "chatbot": {
                "ingress": {
                    "enabled": True,
                    "host": "chat.example.org",
                    "tlsSecretName": "chat-tls",
                },
                # Routing is the point here; sign-on is tests/chart/test_chatbot.py's.
                "auth": {"acceptUnauthenticated": True},
            }
        }
    )
    (ingress,) = find(ours(docs), "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "bigbertha-chatbot", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["chat.example.org"], "secretName": "chat-tls"}]
    assert find(ours(render({})), "Ingress") == []


# Credentials the pinned charts ship as defaults (MinIO 5.4.0's `console`/`console123` user,
# older kube-prometheus-stack's Grafana password): none may reach the render.
KNOWN_DEFAULT_PASSWORDS = ("console123", "prom-operator", "minio123", "minioadmin")


def test_no_default_credential_of_a_subchart_reaches_the_render(docs: list[dict[str, Any]]) -> None:
    import base64

    for doc in docs:
        if doc["kind"] not in ("ConfigMap", "Secret"):
            continue
        values = list((doc.get("data") or {}).values())
        if doc["kind"] == "Secret":
            values = [base64.b64decode(v).decode(errors="replace") for v in values if v]
        for value in values:
            found = [p for p in KNOWN_DEFAULT_PASSWORDS if p in str(value)]
            assert not found, f"{doc['kind']}/{doc['metadata']['name']} holds {found}"
