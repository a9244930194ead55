"""The MinIO event samples, mapped as the chart maps them, ingest the right object.

Each sample from ../shared/samples goes through the rendered ingest Sensor's trigger parameters
(gjson dataKeys → the Workflow's arguments) and the ingest WorkflowTemplate's container args
(`{{inputs.parameters.*}}`), and the resulting command runs against a real S3 server holding an
object under the sample's exact key (a space and a non-ASCII character included).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core.storage import Storage
from tests.chart.render import find, gjson, render_env
from tests.documents.helpers import Env, chunks, ingest, make_pdf

pytestmark = pytest.mark.slow  # loads the embedding model

Chart = tuple[dict[str, Any], dict[str, Any]]  # the ingest Sensor and WorkflowTemplate


def sample(shared_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((shared_dir / "samples" / name).read_text())
    return data


def argo_event(payload: dict[str, Any]) -> dict[str, Any]:
    """Sensor-side event data: Argo's minio EventSource puts the listen API's records under
    `notification` (argo-minio-eventdata-put.json already has that shape)."""
    return payload if "notification" in payload else {"notification": payload["Records"]}


@pytest.fixture(scope="module")
def chart() -> Chart:
    """The rendered ingest Sensor and WorkflowTemplate (chart defaults)."""
    docs = render_env("default")
    [sensor] = [d for d in find(docs, "Sensor") if d["metadata"]["name"].endswith("-ingest")]
    [template] = [
        d for d in find(docs, "WorkflowTemplate") if d["metadata"]["name"].endswith("-ingest")
    ]
    return sensor, template


def _set(obj: Any, dest: str, value: str) -> None:
    *path, last = dest.split(".")
    for part in path:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value


def command_for(chart: Chart, event: dict[str, Any]) -> list[str]:
    """The `bigbertha` argv the chart would run for this event."""
    sensor, template = chart
    [trigger] = sensor["spec"]["triggers"]
    submit = trigger["template"]["argoWorkflow"]
    workflow = copy.deepcopy(submit["source"]["resource"])
    for parameter in submit["parameters"]:
        value = gjson(event, parameter["src"]["dataKey"])
        assert value is not None, f"{parameter['src']['dataKey']} is not in the event"
        _set(workflow, parameter["dest"], value)
    assert workflow["spec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
    arguments = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    entry = {t["name"]: t for t in template["spec"]["templates"]}[template["spec"]["entrypoint"]]
    assert entry["container"]["command"] == ["bigbertha"]
    return [
        re.sub(r"\{\{inputs\.parameters\.([\w-]+)\}\}", lambda m: arguments[m.group(1)], arg)
        for arg in entry["container"]["args"]
    ]


def upload(store: Storage, bucket_name: str, key: str, text: str) -> None:
    store.ensure_bucket(bucket_name)
    store.put(bucket_name, key, make_pdf([text]), content_type="application/pdf")


@pytest.mark.parametrize(
    "name",
    [
        "argo-minio-eventdata-put.json",
        "minio-notification-put.json",
        "minio-notification-multipart.json",
    ],
)
def test_created_event_ingests_the_uploaded_object(
    env: Env,
    storage: Storage,
    shared_dir: Path,
    chart: Chart,
    name: str,
) -> None:
    settings = env()
    event = argo_event(sample(shared_dir, name))
    record = event["notification"][0]
    bucket_name, key = record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
    assert " " in key and "é" in key  # the sample keys are raw
    upload(storage, bucket_name, key, f"Uploaded for {name}: the llama barn opens at six.")

    argv = command_for(chart, event)
    assert argv[0] == "ingest" and argv[argv.index("--event-name") + 1] == record["eventName"]
    result, report = ingest(*argv[1:])

    uri = f"s3://{bucket_name}/{key}"
    assert result.exit_code == 0, result.output
    assert [(r["source"], r["status"]) for r in report["results"]] == [(uri, "ingested")]
    [row] = chunks(settings, uri).values()
    assert f"Uploaded for {name}" in row["text"] and row["page"] == 1
    assert row["file_name"] == key.rsplit("/", 1)[1]


def test_removed_event_deletes_the_objects_chunks(
    env: Env, storage: Storage, shared_dir: Path, chart: Chart
) -> None:
    settings = env()
    event = argo_event(sample(shared_dir, "minio-notification-delete.json"))
    record = event["notification"][0]
    bucket_name, key = record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
    uri = f"s3://{bucket_name}/{key}"
    upload(storage, bucket_name, key, "The July handbook, soon to be deleted.")
    assert ingest(uri)[0].exit_code == 0 and chunks(settings, uri)
    storage.remove(bucket_name, key)

    argv = command_for(chart, event)
    result, report = ingest(*argv[1:])

    assert result.exit_code == 0, result.output
    assert [(r["source"], r["status"], r["removed"]) for r in report["results"]] == [
        (uri, "deleted", 1)
    ]
    assert chunks(settings, uri) == {}

    # A late delete event for an object uploaded again since: the new version stays indexed.
    upload(storage, bucket_name, key, "The July handbook, uploaded again.")
    assert ingest(uri)[0].exit_code == 0
    result, report = ingest(*argv[1:])
    assert result.exit_code == 0, result.output
    assert [(r["source"], r["status"]) for r in report["results"]] == [(uri, "skipped")]
    assert "uploaded again" in next(iter(chunks(settings, uri).values()))["text"]


def test_webhook_target_keys_need_query_decoding(
    env: Env, storage: Storage, shared_dir: Path, chart: Chart
) -> None:
    settings = env()
    payload = sample(shared_dir, "minio-notification-put-webhook-target.json")
    event = argo_event(payload)
    bucket_name, raw_key = payload["Key"].split("/", 1)  # the top-level Key is not escaped
    upload(storage, bucket_name, raw_key, "Delivered by a MinIO webhook notification target.")
    argv = command_for(chart, event)
    escaped = event["notification"][0]["s3"]["object"]["key"]
    assert argv[-1] == f"s3://{bucket_name}/{escaped}" and "+" in escaped and "%2F" in escaped

    # Taken as raw (how the chart's listen-API path works) the escaped key names no object ...
    result, report = ingest(*argv[1:])
    assert result.exit_code == 3
    assert report["rejected"][0]["reason"].startswith("object not found")

    # ... decoded as a query-escaped key it is the uploaded object.
    argv[argv.index("--key-encoding") + 1] = "query"
    result, report = ingest(*argv[1:])
    assert result.exit_code == 0, result.output
    uri = f"s3://{bucket_name}/{raw_key}"
    assert [(r["source"], r["status"]) for r in report["results"]] == [(uri, "ingested")]
    assert "webhook notification target" in next(iter(chunks(settings, uri).values()))["text"]
