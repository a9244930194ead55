"""Render-time rules (templates/validate.yaml and `required`): each fails with an instruction."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from bigbertha.local.chart import load_values
from tests.chart.render import (
    API_VERSIONS,
    ROOT,
    deep_merge,
    env_values,
    find,
    ours,
    render,
    render_raw,
    subchart,
)


def _fails(values: dict[str, Any], message: str, **kwargs: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render_raw(values, **kwargs)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("objectStorage", "set objectStorage.existingSecret"),
        ("redis", "set redis.auth.existingSecret"),
        ("events", "set events.webhook.auth.existingSecret"),
        ("identity", "set chatbot.identity.existingSecret"),
    ],
)
def test_prod_requires_every_existing_secret(key: str, message: str) -> None:
    prod = env_values("prod")
    blank = {
        "objectStorage": {"objectStorage": {"existingSecret": ""}},
        "redis": {"redis": {"auth": {"existingSecret": ""}}},
        "events": {"events": {"webhook": {"auth": {"existingSecret": ""}}}},
        "identity": {"chatbot": {"identity": {"existingSecret": ""}}},
    }[key]
    _fails(deep_merge(prod, blank), message)


# The subcharts' Secrets prod still renders, none a credential a person holds: MLflow's Flask
# session-signing key (made once, kept through `lookup` by its pre-install hook), MLflow's env
# Secret (empty: the database user comes from existingDatabaseSecret) and Alertmanager's
# generated configuration.
PROD_SUBCHART_SECRETS = {
    "bigbertha-mlflow-flask-server-secret-key",
    "bigbertha-mlflow-env-secret",
    "alertmanager-bigbertha-kube-prometheus-alertmanager",
}


def test_prod_renders_no_generated_secret() -> None:
    docs = render(env_values("prod"))
    assert find(ours(docs), "Secret") == [], "prod must use existing Secrets only"
    theirs = {d["metadata"]["name"] for d in find(docs, "Secret") if subchart(d)}
    assert theirs == PROD_SUBCHART_SECRETS, "Grafana's admin login is an existing Secret in prod"
    env = next(
        d
        for d in find(docs, "ConfigMap")
        if d["metadata"]["name"] == "bigbertha-mlflow-env-configmap"
    )
    assert "PGPASSWORD" not in str(env)


def test_generated_secrets_in_dev_are_random_and_named_as_documented() -> None:
    first = {d["metadata"]["name"]: d for d in find(ours(render(env_values("dev"))), "Secret")}
    second = {d["metadata"]["name"]: d for d in find(ours(render(env_values("dev"))), "Secret")}
    assert set(first) == {
        "bigbertha-s3",
        "bigbertha-redis",
        "bigbertha-events-webhook",
        "bigbertha-mlflow-db",
        "bigbertha-identity",
    }
    assert first["bigbertha-mlflow-db"]["data"] != second["bigbertha-mlflow-db"]["data"]
    assert first["bigbertha-identity"]["data"] != second["bigbertha-identity"]["data"]
    # Offline (no live Secret to keep) each render draws a new value: nothing is hard-coded.
    assert first["bigbertha-redis"]["data"] != second["bigbertha-redis"]["data"]
    assert first["bigbertha-s3"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_missing_crds_fail_with_the_install_step() -> None:
    _fails({}, "run ci/install-crds.sh", api_versions=[])
    only_monitoring = [v for v in API_VERSIONS if v.startswith("monitoring")]
    _fails({}, "no argoproj.io/v1alpha1/EventBus CRD", api_versions=only_monitoring)
    assert render({"crdCheck": False}, api_versions=[]), "crdCheck=false renders offline"


@pytest.mark.parametrize("release", ["demo", "llmops", "x"])
def test_any_release_name_renders_without_rewiring(release: str) -> None:
    """Object names do not derive from the release (the subcharts' fullnameOverride)."""
    for env in ("dev", "prod"):
        docs = render(env_values(env), release=release, namespace="team-a")
        names = {d["metadata"]["name"] for d in ours(docs)}
        assert "bigbertha-chatbot" in names and "bigbertha-settings" in names
        labels = ours(docs)[0]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == release


def test_name_override_renames_our_objects_and_lists_every_subchart_value_to_follow() -> None:
    with pytest.raises(helm.HelmRenderError) as failed:
        render_raw({"nameOverride": "bb"})
    message = str(failed.value)
    wanted = [
        'set minio.existingSecret to "bb-s3"',
        'set milvus.standalone.extraEnv with secretKeyRef to "bb-s3"',
        'set mlflow.artifactRoot.s3.existingSecret.name to "bb-s3"',
        'and mlflow.backendStore.postgres.host to "bb-mlflow-db"',
        'set mlflow.backendStore.existingDatabaseSecret.name to "bb-mlflow-db"',
    ]
    for fix in wanted:
        assert fix in message, message
    s3_env = [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": "bb-s3", "key": k}}}
        for n, k in (
            ("MINIO_ACCESS_KEY_ID", "rootUser"),
            ("MINIO_SECRET_ACCESS_KEY", "rootPassword"),
        )
    ]
    rewired = {
        "nameOverride": "bb",
        "minio": {"existingSecret": "bb-s3"},
        "milvus": {"standalone": {"extraEnv": s3_env}},
        "mlflow": {
            "artifactRoot": {"s3": {"existingSecret": {"name": "bb-s3"}}},
            "backendStore": {
                "postgres": {"host": "bb-mlflow-db"},
                "existingDatabaseSecret": {"name": "bb-mlflow-db"},
            },
        },
    }
    docs = ours(render(rewired))
    assert {d["metadata"]["name"] for d in docs} >= {"bb-chatbot", "bb-s3", "bb-settings"}
    assert {d["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs} == {"bb"}
    (deploy,) = find(docs, "Deployment", "bb-chatbot")
    assert deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "bb"


def test_a_subchart_without_its_fullname_override_is_refused() -> None:
    _fails({"minio": {"fullnameOverride": ""}}, "set minio.fullnameOverride")


def test_milvus_cluster_mode_needs_credentials_on_every_node() -> None:
    values = deep_merge(env_values("prod"), {"milvus": {"streamingNode": {"extraEnv": []}}})
    _fails(values, "set milvus.streamingNode.extraEnv")


def test_mlflow_needs_a_real_backend_store() -> None:
    # The bundled bitnami PostgreSQL: its templates render before ours, so the schema refuses it.
    bitnami = {
        "mlflowDatabase": {"enabled": False},
        "mlflow": {
            "postgresql": {"enabled": True},
            "backendStore": {"postgres": {"enabled": False}},
        },
    }
    with pytest.raises(helm.HelmValuesError, match="/mlflow/postgresql/enabled"):
        render_raw(bitnami)
    none = {
        "mlflowDatabase": {"enabled": False},
        "mlflow": {"backendStore": {"postgres": {"enabled": False}}},
    }
    _fails(none, "MLflow needs a real backend store")
    external = {
        "mlflowDatabase": {"enabled": False},
        "mlflow": {
            "backendStore": {
                "postgres": {"host": "db.example", "database": "mlflow"},
                "existingDatabaseSecret": {"name": ""},
            }
        },
    }
    with pytest.raises(
        helm.HelmValuesError, match="/mlflow/backendStore/existingDatabaseSecret/name"
    ):
        render_raw(external)


def test_mlflow_database_wires_are_checked() -> None:
    _fails(
        {"mlflow": {"backendStore": {"postgres": {"host": "elsewhere"}}}},
        'mlflow.backendStore.postgres.host to "bigbertha-mlflow-db"',
    )
    _fails(
        {"mlflowDatabase": {"database": "tracking"}},
        'set mlflow.backendStore.postgres.database to "tracking"',
    )
    prod = deep_merge(env_values("prod"), {"mlflowDatabase": {"enabled": True}})
    _fails(prod, "set mlflowDatabase.auth.existingSecret")


def test_mlflow_must_accept_its_own_service_name() -> None:
    _fails(
        {"mlflow": {"serverAllowedHosts": ["localhost"]}},
        '"bigbertha-mlflow.*.svc" to mlflow.serverAllowedHosts',
    )


def test_milvus_cluster_mode_needs_an_explicit_message_queue() -> None:
    values = deep_merge(env_values("prod"), {"milvus": {"woodpecker": {"enabled": False}}})
    _fails(values, "Milvus cluster mode needs a message queue")


@pytest.mark.parametrize("key", ["llm", "finetune"])
def test_a_hub_model_needs_egress_or_a_prefetch(key: str) -> None:
    field = "model" if key == "llm" else "base_model"
    hub = {"settings": {key: {field: "meta-llama/Llama-2-7b-chat-hf"}}}
    _fails(
        hub,
        f'settings.{key}.{field} "meta-llama/Llama-2-7b-chat-hf" is downloaded from the Hugging',
    )
    egress = {"networkPolicy": {"extraEgress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]}}
    assert render(deep_merge(hub, egress)), "an explicit egress rule lets it download"
    assert render(deep_merge(hub, {"networkPolicy": {"enabled": False}}))


def test_openai_backend_needs_an_endpoint() -> None:
    _fails({"settings": {"llm": {"backend": "openai"}}}, "set settings.llm.api_base")


def test_gitops_needs_a_repository() -> None:
    _fails({"gitops": {"enabled": True}}, "set gitops.repoURL")
    docs = render(
        {
            "gitops": {
                "enabled": True,
                "repoURL": "https://git.example/bb.git",
                "targetRevision": "v0.1.0",
            }
        }
    )
    app = find(docs, "Application")[0]
    assert app["spec"]["source"]["helm"]["valueFiles"] == ["values/prod.yaml"]
    assert app["spec"]["destination"]["namespace"] == "bigbertha"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("milvus", "uri", "http://elsewhere:19530"),
        ("redis", "url", "redis://x"),
        ("chat", "port", 9000),
    ],
)
def test_wired_settings_cannot_be_overridden(section: str, key: str, value: Any) -> None:
    """Service names, ports and Secrets are wired by the chart: the schema refuses them."""
    with pytest.raises(helm.HelmValuesError, match=f"/settings/{section}.*'{key}' not allowed"):
        render_raw({"settings": {section: {key: value}}})


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"minio": {"existingSecret": "other"}}, 'set minio.existingSecret to "bigbertha-s3"'),
        ({"milvus": {"externalS3": {"host": "minio"}}}, 'set milvus.externalS3.host to "bigbertha'),
        (
            {"mlflow": {"extraEnvVars": {"MLFLOW_S3_ENDPOINT_URL": "http://x:9000"}}},
            "set mlflow.extraEnvVars.MLFLOW_S3_ENDPOINT_URL",
        ),
        (
            {"mlflow": {"artifactRoot": {"s3": {"existingSecret": {"name": "other"}}}}},
            'set mlflow.artifactRoot.s3.existingSecret.name to "bigbertha-s3"',
        ),
    ],
)
def test_each_subchart_wire_is_checked(broken: dict[str, Any], message: str) -> None:
    _fails(broken, message)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"global": {"imageRegistry": "registry.internal.example"}}, "global.imageRegistry"),
        ({"chatbot": {"image": {"registry": "registry.example.com"}}}, "chatbot.image.registry"),
        ({"workflows": {"image": {"registry": "<your-registry>"}}}, "workflows.image.registry"),
        ({"exporter": {"image": {"registry": "CHANGEME.io"}}}, "exporter.image.registry"),
    ],
    ids=["global", "example.com", "angle-brackets", "changeme"],
)
def test_a_placeholder_registry_fails_naming_the_value(values: dict[str, Any], key: str) -> None:
    """docs/air-gapped.md's mirror name copied as is would pull nothing: the render says which
    value to set instead of every pod ending in ImagePullBackOff."""
    _fails(values, f"bigbertha: {key} is ")
    _fails(values, "a placeholder no cluster can pull from")


def test_a_real_registry_and_a_digest_render() -> None:
    digest = "sha256:" + "ab" * 32
    docs = ours(
        render(
            {
                "global": {"imageRegistry": "harbor.corp.internal:5000"},
                "chatbot": {"image": {"digest": digest}},
            }
        )
    )
    (chatbot,) = [d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("chatbot")]
    image = chatbot["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("harbor.corp.internal:5000/bigbertha/bigbertha-chat:")
    assert image.endswith(f"@{digest}")


def test_a_malformed_digest_is_refused_by_the_schema() -> None:
    with pytest.raises(helm.HelmValuesError, match="digest"):
        render_raw({"exporter": {"image": {"digest": "latest"}}})


def test_prod_refuses_egress_to_any_address_naming_the_cidrs() -> None:
    """values/prod.yaml alone (no cluster file) would open ports 443/6443 to every address."""
    prod = load_values([ROOT / "values" / "prod.yaml"])
    _fails(prod, "bigbertha: networkPolicy.apiServerCIDRs is empty")
    docs = render(deep_merge(prod, {"networkPolicy": {"apiServerCIDRs": ["10.1.2.3/32"]}}))
    egress = [
        rule
        for policy in find(docs, "NetworkPolicy")
        for rule in policy["spec"].get("egress") or []
        if any(p.get("port") == 6443 for p in rule.get("ports") or [])
    ]
    assert len(egress) == 3, "workflows, sensors and the inference tier call the API"
    assert all(rule["to"] == [{"ipBlock": {"cidr": "10.1.2.3/32"}}] for rule in egress), egress


def test_prod_signs_people_in_or_the_operator_says_it_is_open() -> None:
    """An exposed or production chatbot without sign-on fails the render with the way out;
    sign-on itself is complete or fails naming the key."""
    prod = env_values("prod")
    open_prod = deep_merge(prod, {"chatbot": {"auth": {"enabled": False}}})
    _fails(open_prod, "bigbertha: the chatbot has no sign-on (chatbot.auth.enabled=false)")
    accepted = deep_merge(open_prod, {"chatbot": {"auth": {"acceptUnauthenticated": True}}})
    deploy = next(
        d
        for d in find(render(accepted), "Deployment")
        if d["metadata"]["name"].endswith("-chatbot")
    )
    names = {e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "BIGBERTHA_CHAT__AUTH__ENABLED" not in names
    # The defaults stay open for a local install, until an Ingress exposes the chatbot.
    _fails(
        {"chatbot": {"ingress": {"enabled": True, "host": "chat.example.com"}}},
        "enable chatbot.auth (docs/security.md) or set chatbot.auth.acceptUnauthenticated=true",
    )
    for change, message in [
        ({"issuer": ""}, "chatbot.auth.enabled: set chatbot.auth.issuer"),
        ({"existingSecret": ""}, "chatbot.auth.enabled: set chatbot.auth.existingSecret"),
        ({"providerEgress": []}, "set chatbot.auth.providerEgress"),
        ({"redirectUri": ""}, "set chatbot.auth.redirectUri (the chatbot's public URL"),
    ]:
        _fails(deep_merge(prod, {"chatbot": {"auth": change}}), message)
