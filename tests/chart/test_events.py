"""Argo Events objects: the Sensors' filters and parameter mappings run on the real-shaped sample
payloads (../shared/samples) exactly as the Sensor would apply them (gjson paths, unanchored
regular expressions, dest paths into the submitted Workflow)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import existing, find, gjson, one, render, render_env


def _sample(shared: Path, name: str) -> dict[str, Any]:
    return json.loads((shared / "samples" / name).read_text())


def _passes(sensor: dict[str, Any], event: dict[str, Any]) -> bool:
    """Argo Events data filters: every filter must match (dataLogicalOperator defaults to and);
    a path that does not exist fails; string values are unanchored regular expressions."""
    dep = sensor["spec"]["dependencies"][0]
    for data_filter in dep.get("filters", {}).get("data", []):
        assert data_filter["type"] == "string"
        value = gjson(event, data_filter["path"])
        if value is None:
            return False
        if not any(re.search(p, value) for p in data_filter["value"]):
            return False
    return True


def _submitted(sensor: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The Workflow the trigger would submit: its parameters applied to the source resource."""
    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    workflow = copy.deepcopy(trigger["source"]["resource"])
    for param in trigger["parameters"]:
        src = param["src"]
        if "dataTemplate" in src:
            continue  # the alert episode (a Go template): checked on its own below
        value = gjson(event, src["dataKey"])
        assert value is not None, f"{src['dataKey']}: nothing at this path"
        node: Any = workflow
        *parents, last = param["dest"].split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if param.get("operation") == "append":
            node[key] = node[key] + value
        else:
            node[key] = value
    return workflow


def _arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p.get("value") for p in workflow["spec"]["arguments"]["parameters"]}


@pytest.fixture(scope="module")
def retrain(default_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(default_docs, "Sensor", "bigbertha-retrain")


@pytest.fixture(scope="module")
def ingest(default_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(default_docs, "Sensor", "bigbertha-ingest")


def test_firing_retrain_alert_starts_a_run_with_its_name_and_labels(
    retrain: dict[str, Any], shared_dir: Path
) -> None:
    event = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    assert _passes(retrain, event)
    args = _arguments(_submitted(retrain, event))
    assert args["alert-name"] == "BigBerthaNegativeFeedbackHigh"
    labels = json.loads(args["alert-labels"])
    assert labels["bigbertha_action"] == "retrain" and labels["model_version"] == "v14"


def test_resolved_alerts_start_nothing(retrain: dict[str, Any], shared_dir: Path) -> None:
    assert not _passes(
        retrain,
        _sample(shared_dir, "argo-webhook-eventdata-firing.json")
        | {"body": _sample(shared_dir, "alertmanager-webhook-resolved.json")},
    )


def test_page_alerts_start_nothing_even_when_the_group_fires(
    retrain: dict[str, Any], shared_dir: Path
) -> None:
    event = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    alerts = event["body"]["alerts"]
    # Only the page alert: the group status is still "firing".
    only_page = copy.deepcopy(event)
    only_page["body"]["alerts"] = [a for a in alerts if a["labels"]["bigbertha_action"] == "page"]
    assert only_page["body"]["status"] == "firing" and not _passes(retrain, only_page)
    # The retrain alert resolved while a page alert still fires: filtered per alert, no run.
    mixed = copy.deepcopy(event)
    for alert in mixed["body"]["alerts"]:
        if alert["labels"]["bigbertha_action"] == "retrain":
            alert["status"] = "resolved"
    assert not _passes(retrain, mixed)


def test_filter_values_are_anchored(retrain: dict[str, Any]) -> None:
    for data_filter in retrain["spec"]["dependencies"][0]["filters"]["data"]:
        assert all(v.startswith("^") and v.endswith("$") for v in data_filter["value"])


def _episode_param(sensor: dict[str, Any], dest: str) -> dict[str, Any]:
    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    (param,) = [p for p in trigger["parameters"] if p["dest"] == dest]
    return param


def _workflow_name(sensor: dict[str, Any], event: dict[str, Any]) -> str:
    """The Workflow name the Sensor would submit: its prefix plus the rendered dataTemplate run
    on the event, by the Go template engine the local gateway uses (local.chart.go_template)."""
    from bigbertha.local.chart import go_template

    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    param = _episode_param(sensor, "metadata.name")
    assert param["operation"] == "append"
    return str(trigger["source"]["resource"]["metadata"]["name"]) + go_template(
        param["src"]["dataTemplate"], event
    )


def test_a_storm_of_one_episode_yields_one_workflow_name(
    retrain: dict[str, Any], shared_dir: Path
) -> None:
    """Every notification of one firing episode (repeats, other alerts of the group coming
    and going, a restarted Alertmanager) gets one name; a new startsAt is a new episode."""
    from bigbertha.training import cooldown

    event = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    storm = []
    for n in range(20):
        variant = copy.deepcopy(event)
        variant["body"]["notification_reason"] = f"repeat {n}"
        if n % 2:
            variant["body"]["alerts"][1]["status"] = "resolved"
        if n % 3 == 0:
            variant["body"]["alerts"].reverse()  # the page alert first
        storm.append(_workflow_name(retrain, variant))
    (name,) = set(storm)
    alert = next(a for a in event["body"]["alerts"] if a["labels"]["bigbertha_action"] == "retrain")
    episode = cooldown.episode_id(alert["fingerprint"], alert["startsAt"])
    assert name == f"bigbertha-retrain-{episode}"  # the Python twin computes the same id
    refired = copy.deepcopy(event)
    for a in refired["body"]["alerts"]:
        a["startsAt"] = "2026-08-24T10:15:00Z"
    assert _workflow_name(retrain, refired) != name
    # The same id goes to the Workflow's alert-episode argument (the check step's input).
    param = _episode_param(retrain, "spec.arguments.parameters.2.value")
    assert param["src"] == _episode_param(retrain, "metadata.name")["src"]
    args = retrain["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"]
    assert args["spec"]["arguments"]["parameters"][2] == {"name": "alert-episode"}


def test_malformed_alerts_are_passed_over_and_labels_stand_in_for_a_fingerprint(
    retrain: dict[str, Any], shared_dir: Path
) -> None:
    """Issue 25 item 4: a string `labels` made the template fail for the whole post; alerts
    without fingerprint and startsAt all shared the name of sha256("|")."""
    from bigbertha.training import cooldown

    event = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    good = _workflow_name(retrain, event)
    garbage = copy.deepcopy(event)
    garbage["body"]["alerts"][:0] = [{"status": "firing", "labels": "oops"}, "not an alert", 7]
    assert _workflow_name(retrain, garbage) == good
    assert _passes(retrain, garbage)  # the gjson filters agree: the good alert still fires

    def bare(labels: dict[str, str]) -> dict[str, Any]:
        stripped = copy.deepcopy(event)
        stripped["body"]["alerts"] = [{"status": "firing", "labels": labels}]
        return stripped

    first = {**event["body"]["alerts"][0]["labels"]}
    second = {**first, "model_version": "v15"}
    name = _workflow_name(retrain, bare(first))
    assert name == _workflow_name(retrain, bare(dict(reversed(first.items()))))  # stable
    assert name != _workflow_name(retrain, bare(second))  # other labels, another episode
    canonical = json.dumps(first, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert name == f"bigbertha-retrain-{cooldown.episode_id(canonical, '')}"


def test_workflow_names_are_valid_under_the_longest_fullname(shared_dir: Path) -> None:
    event = _sample(shared_dir, "argo-webhook-eventdata-firing.json")
    fullname = "b" * 63
    s3, db = f"{fullname}-s3", f"{fullname}-mlflow-db"
    credentials = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": s3, "key": key}}}
        for name, key in (
            ("MINIO_ACCESS_KEY_ID", "rootUser"),
            ("MINIO_SECRET_ACCESS_KEY", "rootPassword"),
        )
    ]
    values = {  # the subcharts' values that must name this release's objects (validate.yaml)
        "fullnameOverride": fullname,
        "minio": {"existingSecret": s3},
        "milvus": {"standalone": {"extraEnv": credentials}},
        "mlflow": {
            "artifactRoot": {"s3": {"existingSecret": {"name": s3}}},
            "backendStore": {
                "postgres": {"enabled": True, "host": db},
                "existingDatabaseSecret": {"name": db},
            },
        },
    }
    sensor = one(render(values), "Sensor", f"{fullname}-retrain")
    name = _workflow_name(sensor, event)
    # A DNS-1123 label: Argo labels every pod with its Workflow's name.
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


@pytest.mark.parametrize(
    ("sample", "event_name"),
    [
        ("argo-minio-eventdata-put.json", "s3:ObjectCreated:Put"),
    ],
)
def test_minio_upload_maps_bucket_raw_key_and_event(
    ingest: dict[str, Any], shared_dir: Path, sample: str, event_name: str
) -> None:
    event = _sample(shared_dir, sample)
    assert _passes(ingest, event)
    args = _arguments(_submitted(ingest, event))
    assert args == {
        "bucket": "datasets",
        "key": "docs/handbook 2026-08 café.pdf",
        "event-name": event_name,
    }


@pytest.mark.parametrize(
    ("notification", "event_name"),
    [
        ("minio-notification-delete.json", "s3:ObjectRemoved:Delete"),
        ("minio-notification-multipart.json", "s3:ObjectCreated:CompleteMultipartUpload"),
    ],
)
def test_minio_delete_and_multipart_map_the_same_way(
    ingest: dict[str, Any], shared_dir: Path, notification: str, event_name: str
) -> None:
    record = _sample(shared_dir, notification)
    records = record.get("Records", [record]) if isinstance(record, dict) else record
    event = {"notification": records}
    args = _arguments(_submitted(ingest, event))
    assert args["event-name"] == event_name
    assert args["key"] == records[0]["s3"]["object"]["key"]


def test_sensor_parameters_land_on_declared_workflow_template_arguments(
    docs: list[dict[str, Any]],
) -> None:
    templates = {t["metadata"]["name"]: t for t in find(docs, "WorkflowTemplate")}
    for sensor in find(docs, "Sensor"):
        trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
        workflow = trigger["source"]["resource"]
        declared = {
            p["name"]
            for p in templates[workflow["spec"]["workflowTemplateRef"]["name"]]["spec"][
                "arguments"
            ]["parameters"]
        }
        passed = workflow["spec"]["arguments"]["parameters"]
        assert {p["name"] for p in passed} <= declared
        for param in trigger["parameters"]:
            match = re.fullmatch(r"spec\.arguments\.parameters\.(\d+)\.value", param["dest"])
            assert match or param["dest"] == "metadata.name", param["dest"]
            if match:
                assert int(match[1]) < len(passed), f"{param['dest']} points past the arguments"


def test_event_sources_and_bus(docs: list[dict[str, Any]]) -> None:
    bus = one(docs, "EventBus", "bigbertha")
    assert "jetstream" in bus["spec"]
    for kind in ("EventSource", "Sensor"):
        for doc in find(docs, kind):
            assert doc["spec"]["eventBusName"] == "bigbertha"
    minio = one(docs, "EventSource", "bigbertha-minio")["spec"]["minio"]["documents"]
    assert minio["bucket"]["name"] == "documents"
    assert minio["events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    hook = one(docs, "EventSource", "bigbertha-alerts")["spec"]["webhook"]["alertmanager"]
    assert hook["method"] == "POST" and hook["authSecret"]["key"] == "token"
    sensors = {s["metadata"]["name"]: s for s in find(docs, "Sensor")}
    deps = {n: s["spec"]["dependencies"][0] for n, s in sensors.items()}
    assert deps["bigbertha-retrain"]["eventSourceName"] == "bigbertha-alerts"
    assert deps["bigbertha-retrain"]["eventName"] == "alertmanager"
    assert deps["bigbertha-ingest"]["eventSourceName"] == "bigbertha-minio"
    assert deps["bigbertha-ingest"]["eventName"] == "documents"


def test_minio_filters_come_from_values() -> None:
    docs = render({"events": {"minio": {"prefix": "docs/", "suffix": ".pdf"}}})
    source = one(docs, "EventSource", "bigbertha-minio")["spec"]["minio"]["documents"]
    assert source["filter"] == {"prefix": "docs/", "suffix": ".pdf"}


def _controller_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The argo-events controller's configuration (its chart's configs.jetstream); where the
    cluster runs its own controller (values/shared-cluster.yaml), the pinned chart's defaults,
    the version docs/install.md asks that controller to be."""
    configs = [
        d
        for d in find(docs, "ConfigMap")
        if d["metadata"]["name"].endswith("argo-events-controller-manager")
    ]
    if not configs:
        return _controller_config(existing("argo-events"))
    loaded: dict[str, Any] = yaml.safe_load(configs[0]["data"]["controller-config.yaml"])
    return loaded


def test_eventbus_replicas_follow_the_pinned_argo_events_rules(env: str) -> None:
    """argo-events v1.9 (chart 2.4.22): a JetStream bus has 1 or at least 3 replicas
    (pkg/reconciler/eventbus/validate.go); only 3 or more form a cluster
    (installer/jetstream.go createConfigMap); each stream's replicas are the controller's
    streamConfig with the EventBus' own merged over it (installer/jetstream.go, viper
    MergeConfig), and nats-server refuses more stream replicas than clustered servers."""
    docs = render_env(env)
    bus = one(docs, "EventBus", "bigbertha")["spec"]["jetstream"]
    replicas = int(bus["replicas"])
    assert replicas == 1 or replicas >= 3, f"{env}: a JetStream EventBus of {replicas} replicas"
    stream = yaml.safe_load(_controller_config(docs)["eventBus"]["jetstream"]["streamConfig"])
    stream |= yaml.safe_load(bus.get("streamConfig") or "{}")
    servers = replicas if replicas >= 3 else 1
    assert 1 <= int(stream["replicas"]) <= servers, (
        f"{env}: streams replicated {stream['replicas']} times on {servers} JetStream server(s)"
    )


def test_eventbus_of_two_replicas_is_refused() -> None:
    import helm_python as helm

    from tests.chart.render import render_raw

    with pytest.raises(helm.HelmValuesError, match="eventBus/replicas"):
        render_raw({"events": {"eventBus": {"replicas": 2}}})


def test_jetstream_version_is_one_the_pinned_controller_knows(
    docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    upstream = yaml.safe_load((shared_dir / "upstream/argo-events-2.4.22/values.yaml").read_text())
    known = {v["version"] for v in upstream["configs"]["jetstream"]["versions"]}
    rendered = {v["version"] for v in _controller_config(docs)["eventBus"]["jetstream"]["versions"]}
    assert known == rendered, "the controller runs with the pinned chart's version list"
    version = one(docs, "EventBus", "bigbertha")["spec"]["jetstream"]["version"]
    assert version in known - {"latest"}, f"EventBus JetStream {version} not in {sorted(known)}"
