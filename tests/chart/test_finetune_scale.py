"""Fine-tuning on several GPUs (workflows.finetune.gpus) and several nodes (a Kubeflow Trainer
TrainJob, workflows.finetune.trainJob): what the chart renders, against the real CLI, the
Kubernetes API schemas and the pinned Trainer CRD schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from bigbertha.cli import app
from bigbertha.local.gateway import retry_wanted
from tests.chart import crds
from tests.chart.render import (
    API_VERSIONS,
    PLACEHOLDERS,
    clean,
    deep_merge,
    env_values,
    find,
    one,
    render,
)

TRAINJOB = {"workflows": {"finetune": {"gpus": 4, "trainJob": {"enabled": True, "numNodes": 2}}}}
# What an alert can carry into the Workflow's parameters: quotes, a newline, a template.
HOSTILE = {
    "alert-name": "Bad\"Name'",
    "alert-labels": json.dumps({"team": "a\"b'c", "note": "line\n{{workflow.name}}"}),
}


@pytest.fixture(scope="module")
def trainjob_docs() -> list[dict[str, Any]]:
    return render(deep_merge(env_values("prod"), TRAINJOB))


def _step(docs: list[dict[str, Any]]) -> dict[str, Any]:
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    return next(t for t in wt["templates"] if t["name"] == "finetune")


def _parses(argv: list[str]) -> None:
    """`bigbertha <argv>` parses with the real CLI."""
    name, *rest = argv
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    command.make_context(name, list(rest))


def _argo_substitute(manifest: str, parameters: dict[str, str]) -> dict[str, Any]:
    """The manifest after Argo's substitution: {{=toJson(inputs.parameters['x'])}} becomes the
    JSON string of x (util/expr/env/env.go toJSON), {{workflow.name}} the Workflow's name."""
    # One pass, as Argo's: a substituted value is never templated again.
    manifest = re.sub(
        r"\{\{=toJson\(inputs\.parameters\['([a-z-]+)'\]\)\}\}|\{\{workflow\.name\}\}",
        lambda m: json.dumps(parameters[m[1]]) if m[1] else PLACEHOLDERS["workflow.name"],
        manifest,
    )
    return yaml.safe_load(manifest)


def test_several_gpus_train_data_parallel_on_one_node() -> None:
    docs = render(deep_merge(env_values("prod"), {"workflows": {"finetune": {"gpus": 2}}}))
    container = _step(docs)["container"]
    args = container["args"]
    assert args[args.index("--nproc-per-node") + 1] == "2"
    _parses([re.sub(r"\{\{([^}]+)\}\}", lambda m: PLACEHOLDERS[m[1]], a) for a in args])
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 2
    # NCCL passes tensors between the processes through /dev/shm: memory, bounded.
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    wt = one(docs, "WorkflowTemplate", "bigbertha-finetune")["spec"]
    dshm = next(v for v in wt["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}

    # One GPU: one process, no launcher, no shared memory.
    one_gpu = _step(render(env_values("prod")))["container"]
    assert "--nproc-per-node" not in one_gpu["args"]
    assert one_gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert all(m["name"] != "dshm" for m in one_gpu["volumeMounts"])


def test_gpus_and_train_resources_that_disagree_are_refused() -> None:
    values = deep_merge(
        env_values("prod"),
        {
            "workflows": {
                "finetune": {"gpus": 2, "train": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}
            }
        },
    )
    with pytest.raises(
        Exception, match="workflows.finetune.gpus is 2 but .* asks for 1 nvidia.com/gpu"
    ):
        render(values)


def test_the_trainjob_is_valid_and_carries_hostile_alert_text_intact(
    trainjob_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    step = _step(trainjob_docs)
    assert "container" not in step
    resource = step["resource"]
    assert resource["action"] == "create" and resource["setOwnerReference"] is True
    job = _argo_substitute(resource["manifest"], HOSTILE)
    assert not crds.errors(shared_dir, {**job, "metadata": {"name": "x", **job["metadata"]}})
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "bigbertha-finetune",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    args = trainer["args"]
    # The alert's text arrives as one argument each, byte for byte, and is never templated.
    assert args[args.index("--alert-name") + 1] == HOSTILE["alert-name"]
    assert args[args.index("--alert-labels") + 1] == HOSTILE["alert-labels"]
    assert args[args.index("--workflow-name") + 1] == PLACEHOLDERS["workflow.name"]
    _parses(args)


def test_the_step_waits_on_status_fields_the_trainjob_has(
    trainjob_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    """Argo reads the conditions as gjson paths: each must name an integer of TrainJob's status
    (a typo would wait until the deadline)."""
    resource = _step(trainjob_docs)["resource"]
    status_schema, _ = crds.schema(shared_dir, "TrainJob", "v1alpha1")
    for condition, field in (
        (resource["successCondition"], "succeeded"),
        (resource["failureCondition"], "failed"),
    ):
        path, op, value = condition.split()
        assert (op, value) == (">", "0") and path == f"status.jobsStatus.0.{field}"
        node = status_schema
        for part in path.split("."):
            node = node["items"] if part.isdigit() else node["properties"][part]
        assert node["type"] == "integer", condition
    # Only the waiting pod's own errors retry; a failed TrainJob does not run again.
    expression = _step(trainjob_docs)["retryStrategy"]["expression"]
    assert retry_wanted(expression, "Error", 137) and not retry_wanted(expression, "Failed", 69)


def test_the_runtime_is_namespaced_restricted_and_reaches_only_its_peers(
    trainjob_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    runtime = one(trainjob_docs, "TrainingRuntime", "bigbertha-finetune")
    assert not crds.errors(shared_dir, runtime)
    assert not find(trainjob_docs, "ClusterTrainingRuntime")
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node" and job["template"]["spec"]["backoffLimit"] == 0
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (node,) = pod["containers"]
    assert node["name"] == "node" and node["command"] == ["bigbertha"]
    assert node["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in node["volumeMounts"]} == {"/tmp", "/cache", "/dev/shm"}
    account = one(trainjob_docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False

    # The workflow account may create and read TrainJobs, nothing more on Trainer's API.
    role = one(trainjob_docs, "Role", "bigbertha-workflows")
    trainer_rules = [r for r in role["rules"] if "trainer.kubeflow.org" in r["apiGroups"]]
    assert trainer_rules == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["trainjobs"],
            "verbs": ["create", "get"],
        }
    ]
    # The nodes reach each other on any port (rendezvous, NCCL) and the backends; nothing else.
    policy = one(trainjob_docs, "NetworkPolicy", "bigbertha-trainer")
    peers = policy["spec"]["podSelector"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": peers}]}]
    assert policy["spec"]["egress"][0] == {"to": [{"podSelector": peers}]}
    labels = job["template"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] in peers["matchExpressions"][0]["values"]
    for doc in (account, role, policy):
        kubernetes_validate.validate(clean(doc), "1.30.0", strict=True)


def test_without_trainer_in_the_cluster_the_render_says_what_to_install() -> None:
    values = deep_merge(env_values("prod"), TRAINJOB)
    versions = [v for v in API_VERSIONS if not v.startswith("trainer.kubeflow.org")]
    with pytest.raises(Exception, match="needs Kubeflow Trainer 2.3.*trainJob.enabled=false"):
        render(values, api_versions=versions)
