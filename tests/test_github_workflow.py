""".github/workflows/: ci.yml stays a mirror of .ci/run, its kind job installs what we build and
runs ci/kind-e2e.sh, and release.yml publishes signed, attested images with their digests.

Neither workflow can run here (no Docker, no Kubernetes, no OIDC issuer): these static checks
hold them to the chart's render, the Argo schemas and the shared event samples instead."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import yaml

from bigbertha.local.chart import go_template
from tests.chart import crds
from tests.chart.render import (
    deep_merge,
    env_values,
    find,
    gjson,
    one,
    render,
    render_env,
)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github/workflows/ci.yml"


def jobs() -> dict[str, Any]:
    # PyYAML reads the `on:` key as True; only the jobs matter here.
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return loaded


def runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_test_job_runs_what_the_project_ci_runs() -> None:
    ci_run = (ROOT / ".ci/run").read_text()
    assert "make test" in ci_run and "CI=true" in ci_run
    job = jobs()["test"]
    (step,) = [s for s in job["steps"] if s.get("run") == "make test"]
    assert step["env"]["CI"] == "true"
    # Then the demo, bounded the same way (after the tests, as in .ci/run).
    (demo_line,) = [line for line in ci_run.splitlines() if line.startswith("phase demo ")]
    demo_command = demo_line.split("phase demo ", 1)[1]
    (demo,) = [s for s in job["steps"] if "make demo" in s.get("run", "")]
    assert demo["run"] == demo_command and demo["env"]["CI"] == "true"
    assert job["steps"].index(step) < job["steps"].index(demo)
    assert ci_run.index("phase test make test") < ci_run.index(demo_line)
    python = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    required = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert required and python["with"]["python-version"] == required[1]
    # The test job checks the repository out beside ../shared, where the tests look for it.
    paths = {
        s["with"]["path"] for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")
    }
    assert paths == {"bigbertha", "shared"}


def test_kind_job_loads_every_built_image_and_installs_an_existing_values_file() -> None:
    job = jobs()["kind-install"]
    script = runs(job)
    assert "docker buildx bake -f docker/docker-bake.json" in script
    bake = json.loads((ROOT / "docker/docker-bake.json").read_text())
    built = {tag.split("/")[-1].split(":")[0] for t in bake["target"].values() for tag in t["tags"]}
    loop = re.search(r"for image in ([\w -]+); do", script)
    assert loop and set(loop[1].split()) == built
    values = re.findall(r"helm install \S+ \. .*?-f (\S+)", script)
    assert values and all((ROOT / v).is_file() for v in values)
    assert "ci/install-crds.sh" in script.split("helm install")[0], "CRDs must come first"
    assert (ROOT / "ci/install-crds.sh").is_file()


# ---- release.yml: tag check, images, attestations, signatures, digests.yaml ----------------------

RELEASE = ROOT / ".github/workflows/release.yml"
DIGESTS_SCRIPT = ROOT / "ci/release-digests.py"
BAKE = json.loads((ROOT / "docker/docker-bake.json").read_text())
PLATFORMS = {"linux/amd64", "linux/arm64"}


def release() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RELEASE.read_text())
    return loaded


def release_job() -> dict[str, Any]:
    (job,) = release()["jobs"].values()
    return job  # type: ignore[no-any-return]


def step(job: dict[str, Any], *, uses: str | None = None, run: str | None = None) -> dict[str, Any]:
    """The one step that uses the action `uses` (any version) or whose script contains `run`."""
    found = [
        s
        for s in job["steps"]
        if (uses and s.get("uses", "").split("@")[0] == uses) or (run and run in s.get("run", ""))
    ]
    assert len(found) == 1, f"expected one step for {uses or run!r}, found {len(found)}"
    return found[0]


def bake_repositories() -> dict[str, str]:
    """bake target -> the repository it pushes (bake variables at their defaults)."""
    defaults = {k: v["default"] for k, v in BAKE["variable"].items()}
    out = {}
    for name, target in BAKE["target"].items():
        (tag,) = target["tags"]
        ref = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], tag)
        out[name] = ref.rsplit(":", 1)[0]
    return out


def image_blocks() -> dict[str, str]:
    """values.yaml block path (`chatbot.image`) -> the bake target whose image it runs."""
    values = yaml.safe_load((ROOT / "values.yaml").read_text())
    by_repository = {repo: target for target, repo in bake_repositories().items()}
    found = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("repository"), str) and "registry" in node:
                target = by_repository.get(f"{node['registry']}/{node['repository']}")
                if target:
                    found[".".join(path)] = target
            for key, value in node.items():
                walk(value, (*path, key))

    walk(values, ())
    return found


def fake_metadata() -> dict[str, dict[str, str]]:
    """What `docker buildx bake --push --metadata-file` writes, one distinct digest per target."""
    return {
        name: {
            "buildx.build.ref": f"builder/builder0/{name}",
            "containerimage.descriptor": "{}",
            "containerimage.digest": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "image.name": f"{repository}:0.2.0",
        }
        for name, repository in bake_repositories().items()
    }


def run_digests(tmp_path: Path) -> tuple[dict[str, Any], list[str]]:
    """(digests.yaml as loaded, the `<repository> <digest>` lines) of ci/release-digests.py."""
    (tmp_path / "metadata.json").write_text(json.dumps(fake_metadata()))
    done = subprocess.run(
        [sys.executable, str(DIGESTS_SCRIPT), "metadata.json", "digests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = yaml.safe_load((tmp_path / "digests.yaml").read_text())
    return loaded, done.stdout.splitlines()


def digest_leaves(node: Any, path: tuple[str, ...] = ()) -> dict[str, str]:
    """`chatbot.image` -> its digest, for every `<block>.digest` leaf of a values mapping."""
    out: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(digest_leaves(value, (*path, key)))
        else:
            assert key == "digest", f"{'.'.join((*path, key))}: only digests belong here"
            out[".".join(path)] = value
    return out


def test_release_runs_on_version_tags_and_by_hand() -> None:
    # PyYAML reads `on:` as True.
    triggers = release()[True]
    assert triggers["push"] == {"tags": ["v*"]}
    # By hand: started from the tag (a branch fails the tag check below), so the signing
    # identity is always `release.yml@refs/tags/v<appVersion>`, as docs/images.md verifies.
    assert triggers["workflow_dispatch"] is None
    job = release_job()
    assert job["env"]["RELEASE_TAG"] == "${{ github.ref_name }}"
    assert "with" not in step(job, uses="actions/checkout")  # github.ref: the tag


@pytest.mark.parametrize(
    ("ref", "matches"),
    [("refs/tags/v{}", True), ("refs/tags/v9.9.9", False), ("refs/heads/v{}", False)],
    ids=["matching tag", "other tag", "branch"],
)
def test_release_tag_must_be_v_plus_the_chart_app_version(
    tmp_path: Path, ref: str, matches: bool
) -> None:
    """The check step runs as written, with a stand-in `yq` that answers only the query the
    step must make (`yq '.appVersion' Chart.yaml`) with Chart.yaml's appVersion."""
    job = release_job()
    check = step(job, run="Chart.yaml")
    assert check["id"] == "version"
    app_version = yaml.safe_load((ROOT / "Chart.yaml").read_text())["appVersion"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    yq = bin_dir / "yq"
    yq.write_text(
        '#!/bin/sh\n[ "$1" = .appVersion ] && [ "$2" = Chart.yaml ] || exit 99\n'
        f"echo {app_version}\n"
    )
    yq.chmod(0o755)
    output = tmp_path / "github_output"
    output.write_text("")
    ref = ref.format(app_version)
    done = subprocess.run(
        ["bash", "-e", "-c", check["run"]],
        cwd=ROOT,
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "GITHUB_REF": ref,
            "RELEASE_TAG": ref.rsplit("/", 1)[1],  # github.ref_name
            "GITHUB_OUTPUT": str(output),
        },
        capture_output=True,
        text=True,
    )
    if matches:
        assert done.returncode == 0, done.stdout + done.stderr
        assert output.read_text() == f"app-version={app_version}\n"
    else:
        assert done.returncode == 1 and "::error" in done.stdout
        assert output.read_text() == ""
    # The images are tagged with what the check read (bake variable TAG), nothing else.
    bake = step(job, uses="docker/bake-action")
    assert bake["env"]["TAG"] == "${{ steps.version.outputs.app-version }}"
    assert "TAG" in BAKE["variable"] and job["steps"].index(check) < job["steps"].index(bake)


def test_release_builds_every_bake_target_for_amd64_and_arm64_with_sbom_and_provenance() -> None:
    job = release_job()
    bake = step(job, uses="docker/bake-action")
    options = bake["with"]
    assert options["files"] == "docker/docker-bake.json" and options["push"] is True
    assert options["source"] == "."  # the checked-out tag the version check read
    assert (
        set(options["targets"].split(",")) == set(BAKE["target"]) == {"exporter", "chat", "trainer"}
    )
    overrides = options["set"].split()
    assert f"*.platform={','.join(sorted(PLATFORMS))}" in overrides
    assert {"*.attest=type=sbom", "*.attest=type=provenance,mode=max"} <= set(overrides)
    # The bake file agrees, so `docker buildx bake --push` by hand (docs/images.md) does too.
    assert all(set(t["platforms"]) == PLATFORMS for t in BAKE["target"].values())
    assert job["env"]["REGISTRY"] == BAKE["variable"]["REGISTRY"]["default"] == "ghcr.io/bigbertha"
    assert set(bake_repositories().values()) == {
        "ghcr.io/bigbertha/bigbertha",
        "ghcr.io/bigbertha/bigbertha-chat",
        "ghcr.io/bigbertha/bigbertha-train",
    }
    # QEMU (arm64 on an amd64 runner), a buildx builder and the ghcr.io login come first.
    before = job["steps"][: job["steps"].index(bake)]
    assert {s.get("uses", "").split("@")[0] for s in before} >= {
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
    }
    login = step(job, uses="docker/login-action")["with"]
    assert login["registry"] == "ghcr.io" and login["password"] == "${{ secrets.GITHUB_TOKEN }}"


def test_release_signs_each_image_keyless_by_digest(tmp_path: Path) -> None:
    job = release_job()
    assert release()["permissions"] == {"contents": "read"}  # the default stays read-only
    assert job["permissions"] == {"contents": "write", "packages": "write", "id-token": "write"}
    record = step(job, run="ci/release-digests.py")
    assert record["env"]["BAKE_METADATA"] == "${{ steps.bake.outputs.metadata }}"
    assert step(job, uses="docker/bake-action")["id"] == "bake"
    assert "> images.txt" in record["run"]
    installer = step(job, uses="sigstore/cosign-installer")
    sign = step(job, run="cosign sign")
    steps = job["steps"]
    assert steps.index(record) < steps.index(installer) < steps.index(sign)
    # Keyless (no --key: the OIDC token of id-token: write), by digest, every recorded image.
    assert "--key" not in sign["run"]
    assert re.search(
        r"while read -r repository digest; do\s+"
        r'cosign sign --yes "\$\{repository\}@\$\{digest\}"\s+done < images.txt',
        sign["run"],
    )
    verify = step(job, run="cosign verify")
    assert "--certificate-oidc-issuer https://token.actions.githubusercontent.com" in verify["run"]
    assert steps.index(sign) < steps.index(verify)
    # What images.txt holds: each pushed repository with its index digest, from the metadata.
    _, lines = run_digests(tmp_path)
    metadata = fake_metadata()
    assert sorted(lines) == sorted(
        f"{bake_repositories()[t]} {metadata[t]['containerimage.digest']}" for t in BAKE["target"]
    )


def test_digests_yaml_pins_exactly_the_values_blocks_of_the_released_images(
    tmp_path: Path,
) -> None:
    """digests.yaml names `<block>.digest` for every block of values.yaml whose image the release
    pushes (the chat image runs in four places), with that image's digest; each is a key the
    values schema accepts, and the chart then pulls every one of our images by that digest."""
    blocks = image_blocks()
    assert set(blocks.values()) == set(BAKE["target"])
    assert {"chatbot.image", "exporter.image", "workflows.image"} <= set(blocks)
    digests, _ = run_digests(tmp_path)
    metadata = fake_metadata()
    assert digest_leaves(digests) == {
        block: metadata[target]["containerimage.digest"] for block, target in blocks.items()
    }
    # Every block has (or, while values.yaml catches up, its schema accepts) a `digest` key.
    values = yaml.safe_load((ROOT / "values.yaml").read_text())
    schema = json.loads((ROOT / "values.schema.json").read_text())
    for block in blocks:
        node, node_schema = values, schema
        for key in block.split("."):
            node, node_schema = node[key], node_schema["properties"][key]
        assert "digest" in node or "digest" in node_schema["properties"], block
    merged = deep_merge(copy.deepcopy(values), digests)
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(merged)]
    assert not errors, errors
    # The render with digests.yaml layered last: each of our images by its digest.
    by_repository = {
        bake_repositories()[t]: m["containerimage.digest"] for t, m in metadata.items()
    }
    seen = set()
    for image in rendered_images(render(deep_merge(env_values("local"), digests))):
        repository = next((r for r in by_repository if image.startswith(f"{r}:")), None)
        if repository:
            assert image.endswith(f"@{by_repository[repository]}"), image
            seen.add(repository)
    assert seen == set(by_repository)


def rendered_images(node: Any) -> list[str]:
    """Every `image:` string anywhere in a render (pods, jobs, WorkflowTemplate steps)."""
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for value in node.values() for i in rendered_images(value)]
    if isinstance(node, list):
        return [i for value in node for i in rendered_images(value)]
    return []


def test_release_attaches_digests_yaml_to_the_release_and_the_run() -> None:
    job = release_job()
    published = step(job, uses="softprops/action-gh-release")["with"]
    assert published["files"] == "digests.yaml"
    assert published["tag_name"] == "${{ env.RELEASE_TAG }}"
    artifact = step(job, uses="actions/upload-artifact")["with"]
    assert "digests.yaml" in artifact["path"].split()


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github/workflows").glob("*.yml")), ids=str)
def test_every_action_is_pinned_to_a_major_version(workflow: Path) -> None:
    """No SHA pins without network to look them up: a major tag each, as ci.yml has always had."""
    loaded = yaml.safe_load(workflow.read_text())
    uses = [s["uses"] for job in loaded["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses
    loose = [u for u in uses if not re.fullmatch(r"[\w-]+/[\w-]+@v\d+", u)]
    assert not loose, f"{workflow.name}: {loose}"


# ---- ci/kind-e2e.sh: the kind job's end-to-end checks, against the render they run on -----------

# What an Argo Events Sensor and the Argo API server do with an event or a manifest, as
# tests/chart/test_events.py and tests/chart/test_kubernetes.py model them (test modules import
# no other test module: tests/test_layout.py).


def _passes(sensor: dict[str, Any], event: dict[str, Any]) -> bool:
    """The Sensor's data filters (all must match; gjson paths; unanchored regular expressions)."""
    for data_filter in sensor["spec"]["dependencies"][0].get("filters", {}).get("data", []):
        assert data_filter["type"] == "string"
        value = gjson(event, data_filter["path"])
        if value is None or not any(re.search(p, value) for p in data_filter["value"]):
            return False
    return True


def _submitted(sensor: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The Workflow the Sensor's trigger submits for `event` (dataKey parameters applied; the
    alert episode, a Go template, by _workflow_name)."""
    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    workflow = copy.deepcopy(trigger["source"]["resource"])
    for param in trigger["parameters"]:
        if "dataTemplate" in param["src"]:
            continue
        value = gjson(event, param["src"]["dataKey"])
        assert value is not None, f"{param['src']['dataKey']}: nothing at this path"
        node: Any = workflow
        *parents, last = param["dest"].split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        node[key] = node[key] + value if param.get("operation") == "append" else value
    return workflow


def _workflow_name(sensor: dict[str, Any], event: dict[str, Any]) -> str:
    """The name the retrain Sensor gives the Workflow: its prefix plus the alert episode."""
    trigger = sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]
    (param,) = [p for p in trigger["parameters"] if p["dest"] == "metadata.name"]
    assert param["operation"] == "append"
    prefix = str(trigger["source"]["resource"]["metadata"]["name"])
    return prefix + go_template(param["src"]["dataTemplate"], event)


E2E = ROOT / "ci/kind-e2e.sh"


def e2e() -> str:
    return E2E.read_text()


def e2e_vars() -> dict[str, str]:
    """The script's plain `NAME=value` settings (comments and quotes stripped)."""
    found = re.findall(r"^([A-Z][A-Z0-9_]*)=(\S+)", e2e(), flags=re.M)
    return {name: value.strip("\"'") for name, value in found}


def heredoc(tag: str) -> str:
    """The body of the script's heredoc closed by `tag` (exactly one)."""
    (body,) = re.findall(rf"<<'?{tag}'?\n(.*?)^{tag}$", e2e(), flags=re.S | re.M)
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def local_docs() -> list[dict[str, Any]]:
    """What the kind job installs: values/local.yaml (checked below)."""
    return render_env("local")


def test_kind_job_runs_the_end_to_end_script_after_the_install_and_helm_test() -> None:
    job = jobs()["kind-install"]
    runs_ = [s.get("run", "") for s in job["steps"]]
    e2e_step = runs_.index("ci/kind-e2e.sh")
    install = next(i for i, r in enumerate(runs_) if "helm install" in r)
    helm_test = next(i for i, r in enumerate(runs_) if r.startswith("helm test"))
    assert install < helm_test < e2e_step
    # The script checks the release the job installs: its name, namespace and values file.
    assert re.search(r"helm install bigbertha \. -n bigbertha -f values/local.yaml", runs_[install])
    assert e2e_vars()["NAMESPACE"] == "bigbertha"
    assert os.access(E2E, os.X_OK)
    assert e2e().startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in e2e()
    subprocess.run(["bash", "-n", str(E2E)], check=True)
    # It says it cannot run on the project's own machines, and so does the workflow.
    assert "cannot run there" in WORKFLOW.read_text() and "cannot run" in RELEASE.read_text()
    # The image it runs its steps on is one the job builds and loads into kind.
    assert re.search(r'^IMAGE="ghcr\.io/bigbertha/bigbertha:\$\(yq', e2e(), flags=re.M)


def test_kind_e2e_reaches_the_objects_the_chart_renders(local_docs: list[dict[str, Any]]) -> None:
    v = e2e_vars()
    # The alerts webhook: Service <eventsource>-eventsource-svc, port, path, bearer Secret.
    alerts = one(local_docs, "EventSource", v["WEBHOOK_EVENTSOURCE"])
    assert alerts["spec"]["service"]["ports"][0]["port"] == int(v["WEBHOOK_PORT"])
    hook = alerts["spec"]["webhook"]["alertmanager"]
    assert hook["port"] == v["WEBHOOK_PORT"] and hook["endpoint"] == v["WEBHOOK_PATH"]
    assert hook["authSecret"] == {"name": v["WEBHOOK_SECRET"], "key": "token"}
    assert "token" in one(local_docs, "Secret", v["WEBHOOK_SECRET"])["data"]
    assert '"$WEBHOOK_EVENTSOURCE-eventsource-svc"' in e2e()
    assert "Authorization: Bearer $token" in e2e() and 'secret "$WEBHOOK_SECRET" token' in e2e()
    # MinIO: the Service, the credentials Secret, and the bucket its EventSource watches.
    minio = one(local_docs, "Service", v["MINIO_SERVICE"])
    assert int(v["MINIO_PORT"]) in {p["port"] for p in minio["spec"]["ports"]}
    source = one(local_docs, "EventSource", v["MINIO_EVENTSOURCE"])["spec"]["minio"]["documents"]
    assert source["bucket"]["name"] == v["DOCUMENTS_BUCKET"]
    assert source["accessKey"] == {"name": v["S3_SECRET"], "key": "rootUser"}
    assert source["secretKey"] == {"name": v["S3_SECRET"], "key": "rootPassword"}
    assert {"rootUser", "rootPassword"} <= set(one(local_docs, "Secret", v["S3_SECRET"])["data"])
    key = uploaded_key()
    assert key.startswith(source["filter"]["prefix"]) and key.endswith(source["filter"]["suffix"])
    assert "s3:ObjectCreated:*" in source["events"]
    # The retrain's inputs go where the settings read them, in buckets MinIO creates.
    settings = one(local_docs, "ConfigMap", "bigbertha-settings")["data"]
    assert json.loads(settings["BIGBERTHA_FINETUNE__DATA"])[0] == v["CURATED_URI"]
    assert settings["BIGBERTHA_EVALUATE__GOLDEN"] == v["GOLDEN_URI"]
    values = deep_merge(yaml.safe_load((ROOT / "values.yaml").read_text()), env_values("local"))
    buckets = {b["name"] for b in values["minio"]["buckets"]}
    puts = re.findall(r"^s3_put (\S+) (\S+)$", e2e(), flags=re.M)
    assert len(puts) == 3
    for source_file, target in puts:
        assert (ROOT / source_file).is_file(), source_file
        uri = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: v[m[1] or m[2]], target.strip('"'))
        assert uri[len("s3://") :].split("/")[0] in buckets, uri
    # The account the test Workflows run under may report their step results.
    account = v["WORKFLOWS_SERVICE_ACCOUNT"]
    one(local_docs, "ServiceAccount", account)
    (binding,) = [
        b
        for b in find(local_docs, "RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": "bigbertha"} in b["subjects"]
    ]
    rules = one(local_docs, "Role", binding["roleRef"]["name"])["rules"]
    assert any(
        "workflowtaskresults" in r["resources"] and {"create", "patch"} <= set(r["verbs"])
        for r in rules
    )


def uploaded_key() -> str:
    (target,) = re.findall(r'^s3_put docs/\S+ "s3://\$DOCUMENTS_BUCKET/(\S+)"$', e2e(), flags=re.M)
    return target  # type: ignore[no-any-return]


def _selector(value: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in value.split(","))


def test_kind_e2e_alert_fires_the_retrain_sensor(
    local_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    """The alert the script POSTs is an Alertmanager webhook body (the sample's fields, a real
    label fingerprint) that the retrain Sensor's filters pass, and the Workflow it submits
    carries the labels the script waits on; with another action label it would not fire."""
    v = e2e_vars()
    payload = json.loads(heredoc("JSON"))
    sample = json.loads((shared_dir / "samples/alertmanager-webhook-firing.json").read_text())
    assert set(payload) == set(sample)
    (alert,) = payload["alerts"]
    assert set(alert) == set(sample["alerts"][0])
    assert alert["fingerprint"] == label_fingerprint(alert["labels"])
    event = json.loads((shared_dir / "samples/argo-webhook-eventdata-firing.json").read_text())
    event["body"] = payload
    retrain = one(local_docs, "Sensor", v["RETRAIN_SENSOR"])
    assert retrain["spec"]["dependencies"][0]["eventSourceName"] == v["WEBHOOK_EVENTSOURCE"]
    assert _passes(retrain, event)
    workflow = _submitted(retrain, event)
    args = {p["name"]: p.get("value") for p in workflow["spec"]["arguments"]["parameters"]}
    assert args["alert-name"] == "BigBerthaNegativeFeedbackHigh"
    assert json.loads(args["alert-labels"]) == alert["labels"]
    name = _workflow_name(retrain, event)
    assert re.fullmatch(r"bigbertha-retrain-[0-9a-f]{10}", name)
    assert _selector(v["RETRAIN_SELECTOR"]).items() <= workflow["metadata"]["labels"].items()
    ingest = one(local_docs, "Sensor", v["INGEST_SENSOR"])
    ingest_labels = ingest["spec"]["triggers"][0]["template"]["argoWorkflow"]["source"]["resource"][
        "metadata"
    ]["labels"]
    assert not _selector(v["RETRAIN_SELECTOR"]).items() <= ingest_labels.items()
    paged = copy.deepcopy(event)
    paged["body"]["alerts"][0]["labels"]["bigbertha_action"] = "page"
    assert not _passes(retrain, paged)


def label_fingerprint(labels: dict[str, str]) -> str:
    """Prometheus' label-set fingerprint (FNV-1a 64 over sorted name, 0xff, value, 0xff)."""
    value = 0xCBF29CE484222325
    for name in sorted(labels):
        for byte in name.encode() + b"\xff" + labels[name].encode() + b"\xff":
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def test_kind_e2e_upload_starts_an_ingest_of_that_object(
    local_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    v = e2e_vars()
    event = json.loads((shared_dir / "samples/argo-minio-eventdata-put.json").read_text())
    record = event["notification"][0]["s3"]
    record["bucket"]["name"] = v["DOCUMENTS_BUCKET"]
    record["object"]["key"] = uploaded_key()
    ingest = one(local_docs, "Sensor", v["INGEST_SENSOR"])
    assert ingest["spec"]["dependencies"][0]["eventSourceName"] == v["MINIO_EVENTSOURCE"]
    assert _passes(ingest, event)
    workflow = _submitted(ingest, event)
    args = {p["name"]: p.get("value") for p in workflow["spec"]["arguments"]["parameters"]}
    assert args["bucket"] == v["DOCUMENTS_BUCKET"] and args["key"] == uploaded_key()
    assert _selector(v["INGEST_SELECTOR"]).items() <= workflow["metadata"]["labels"].items()


def e2e_workflows() -> dict[str, dict[str, Any]]:
    """name -> the Workflow `submit_step <name> '<command>'` creates (the heredoc, expanded)."""
    v = e2e_vars()
    template = heredoc("EOF")
    calls = re.findall(r"^submit_step (\S+) '([^']*)'$", e2e(), flags=re.M)
    assert len(calls) == 2
    out = {}
    for name, command in calls:
        text = template.replace("$1", name).replace("$2", command)
        text = text.replace("${WORKFLOWS_SERVICE_ACCOUNT}", v["WORKFLOWS_SERVICE_ACCOUNT"])
        text = text.replace("${IMAGE}", "ghcr.io/bigbertha/bigbertha:0.2.0")
        assert "$" not in text, text
        out[name] = yaml.safe_load(text)
    return out


def _retries(expression: str, status: str, exit_code: int) -> bool:
    """Argo's retry expression (expr-lang: ==, ||, &&) on the last attempt."""
    python = expression.replace("||", " or ").replace("&&", " and ")
    last = SimpleNamespace(status=status, exitCode=str(exit_code))
    return bool(eval(python, {"__builtins__": {}}, {"lastRetry": last}))  # noqa: S307


def test_kind_e2e_workflows_are_valid_and_retry_as_the_chart_does(
    local_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    """The two Workflows validate against the Argo Workflow CRD schema (../shared, unknown fields
    refused) and their step retries exactly as every WorkflowTemplate step of the chart does;
    under that rule the first attempt of one exits 69 and is retried into a success, the other
    exits 2 and is final."""
    chart_rules = {
        (tpl["retryStrategy"]["retryPolicy"], tpl["retryStrategy"]["expression"])
        for wt in find(local_docs, "WorkflowTemplate")
        for tpl in wt["spec"]["templates"]
        if "retryStrategy" in tpl
    }
    assert len(chart_rules) == 1  # one rule for every step
    ((policy, expression),) = chart_rules
    workflows = e2e_workflows()
    assert set(workflows) == {"e2e-retry-69", "e2e-exit-2"}
    for name, workflow in workflows.items():
        assert workflow["metadata"]["name"] == name
        assert not crds.errors(shared_dir, workflow), crds.errors(shared_dir, workflow)
        (tpl,) = workflow["spec"]["templates"]
        strategy = tpl["retryStrategy"]
        assert (strategy["retryPolicy"], strategy["expression"]) == (policy, expression)
        assert strategy["limit"] >= 1

    def exit_codes(name: str) -> list[int]:
        """Exit code of each attempt under the retry rule ({{retries}}: the attempt number)."""
        (tpl,) = workflows[name]["spec"]["templates"]
        assert tpl["container"]["command"] == ["sh", "-c"]
        (script,) = tpl["container"]["args"]
        codes: list[int] = []
        for attempt in range(tpl["retryStrategy"]["limit"] + 1):
            shell = script.replace("{{retries}}", str(attempt))
            code = subprocess.run(["sh", "-c", shell], check=False).returncode
            codes.append(code)
            if code == 0 or not _retries(expression, "Failed", code):
                break
        return codes

    assert exit_codes("e2e-retry-69") == [69, 0]
    assert exit_codes("e2e-exit-2") == [2]
    # And the script expects exactly those outcomes of the controller.
    assert '"Failed:69 Succeeded:"*)' in e2e() and '"$tries" != "Failed:2"' in e2e()


# ---- docs/images.md: what it tells users matches what the release does --------------------------

IMAGES_DOC = ROOT / "docs/images.md"


def test_images_doc_verifies_the_identity_the_release_signs_with() -> None:
    """The doc's `cosign verify` accepts the certificate identity release.yml signs with (its
    own verify step's: server URL + workflow_ref, for a push of the version tag) and nothing
    from a branch, a fork or another workflow."""
    text = IMAGES_DOC.read_text()
    (regexp,) = re.findall(r"--certificate-identity-regexp '([^']+)'", text)
    (issuer,) = re.findall(r"--certificate-oidc-issuer (\S+)", text)
    verify = step(release_job(), run="cosign verify")
    assert verify["env"]["IDENTITY"] == "${{ github.server_url }}/${{ github.workflow_ref }}"
    assert f"--certificate-oidc-issuer {issuer}" in verify["run"]
    chart = yaml.safe_load((ROOT / "Chart.yaml").read_text())
    workflow = f"{chart['home']}/.github/workflows/release.yml"
    assert re.search(regexp, f"{workflow}@refs/tags/v{chart['appVersion']}")
    for other in (
        f"{workflow}@refs/heads/main",
        f"{chart['home']}/.github/workflows/ci.yml@refs/tags/v{chart['appVersion']}",
        f"https://github.com/fork/bigbertha/.github/workflows/release.yml@refs/tags/v{chart['appVersion']}",
    ):
        assert not re.search(regexp, other), other


def test_images_doc_names_every_image_block_and_the_bake_variables() -> None:
    text = IMAGES_DOC.read_text()
    blocks = image_blocks()
    (example,) = [
        yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "digest" in b
    ]
    assert set(digest_leaves(example)) == set(blocks)
    for block, target in blocks.items():
        (row,) = [
            line
            for line in text.splitlines()
            if line.startswith(f"| `{bake_repositories()[target]}` |")
        ]
        assert f"`{block}`" in row and f"`{target}`" in row
    (command,) = re.findall(
        r"^((?:\w+=\S+ )+)\\\n\s+docker buildx bake -f docker/docker-bake.json", text, re.M
    )
    assert {a.split("=")[0] for a in command.split()} <= set(BAKE["variable"])
