"""Render-time rules (templates/validate.yaml and `required`): each fails with an instruction."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from tests.chart.render import API_VERSIONS, deep_merge, env_values, find, render, render_raw


def _fails(values: dict[str, Any], message: str, **kwargs: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render_raw(values, **kwargs)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("objectStorage", "set objectStorage.existingSecret"),
        ("redis", "set redis.auth.existingSecret"),
        ("events", "set events.webhook.auth.existingSecret"),
    ],
)
def test_prod_requires_every_existing_secret(key: str, message: str) -> None:
    prod = env_values("prod")
    blank = {
        "objectStorage": {"objectStorage": {"existingSecret": ""}},
        "redis": {"redis": {"auth": {"existingSecret": ""}}},
        "events": {"events": {"webhook": {"auth": {"existingSecret": ""}}}},
    }[key]
    _fails(deep_merge(prod, blank), message)


def test_prod_renders_no_generated_secret() -> None:
    docs = render(env_values("prod"))
    assert find(docs, "Secret") == [], "prod must use existing Secrets only"


def test_generated_secrets_in_dev_are_random_and_named_as_documented() -> None:
    first = {d["metadata"]["name"]: d for d in find(render(env_values("dev")), "Secret")}
    second = {d["metadata"]["name"]: d for d in find(render(env_values("dev")), "Secret")}
    assert set(first) == {"bigbertha-s3", "bigbertha-redis", "bigbertha-events-webhook"}
    # Offline (no live Secret to keep) each render draws a new value: nothing is hard-coded.
    assert first["bigbertha-redis"]["data"] != second["bigbertha-redis"]["data"]
    assert first["bigbertha-s3"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_missing_crds_fail_with_the_install_step() -> None:
    _fails({}, "run ci/install-crds.sh", api_versions=[])
    only_monitoring = [v for v in API_VERSIONS if v.startswith("monitoring")]
    _fails({}, "no argoproj.io/v1alpha1/EventBus CRD", api_versions=only_monitoring)
    assert render({"crdCheck": False}, api_versions=[]), "crdCheck=false renders offline"


def test_another_release_name_must_rewire_the_subcharts() -> None:
    _fails({}, 'set minio.existingSecret to "demo-bigbertha-s3"', release="demo")
    rewired = {
        "minio": {"existingSecret": "demo-bigbertha-s3"},
        "milvus": {"externalS3": {"host": "demo-minio"}},
        "mlflow": {"extraEnvVars": {"MLFLOW_S3_ENDPOINT_URL": "http://demo-minio:9000"}},
    }
    _fails(
        rewired,
        'set milvus.standalone.extraEnv with secretKeyRef to "demo-bigbertha-s3"',
        release="demo",
    )


def test_milvus_cluster_mode_needs_credentials_on_every_node() -> None:
    values = deep_merge(env_values("prod"), {"milvus": {"streamingNode": {"extraEnv": []}}})
    _fails(values, "set milvus.streamingNode.extraEnv")


def test_mlflow_needs_a_real_backend_store() -> None:
    _fails({"mlflow": {"postgresql": {"enabled": False}}}, "MLflow needs a real backend store")
    external = {
        "mlflow": {
            "postgresql": {"enabled": False},
            "backendStore": {"postgres": {"enabled": True, "host": "db", "database": "mlflow"}},
        }
    }
    _fails(external, "set mlflow.backendStore.existingDatabaseSecret.name")


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
