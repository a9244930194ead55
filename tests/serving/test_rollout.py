"""The roll a merged champion needs: one pod-template annotation, patched once, with the pod's
token, against a stand-in Kubernetes API that applies a strategic-merge patch the same way for
this one field."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.serving import rollout
from tests.services import free_port

PATH = "/apis/apps/v1/namespaces/bigbertha/deployments/bigbertha-vllm"


class FakeApiServer:
    def __init__(self, token: str) -> None:
        self.token = token
        self.deployment: dict[str, Any] = {
            "metadata": {"name": "bigbertha-vllm", "generation": 1},
            "spec": {"template": {"metadata": {"annotations": {"checksum/config": "abc"}}}},
        }
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Response(json.dumps({"kind": "Status", "code": 401}), 401)(
                environ, start_response
            )
        if request.path != PATH:
            return Response(json.dumps({"kind": "Status", "code": 404}), 404)(
                environ, start_response
            )
        if request.method == "PATCH":
            body = json.loads(request.data)
            self.patches.append((request.headers["Content-Type"], body))
            new = body["spec"]["template"]["metadata"]["annotations"]
            template = self.deployment["spec"]["template"]["metadata"]["annotations"]
            if any(template.get(k) != v for k, v in new.items()):
                template.update(new)  # a changed pod template: a new ReplicaSet, a roll
                self.deployment["metadata"]["generation"] += 1
        return Response(json.dumps(copy.deepcopy(self.deployment)), 200)(environ, start_response)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, rollout.KubeApi, Path]]:
    fake = FakeApiServer("pod-token-1")
    port = free_port()
    server = make_server("127.0.0.1", port, fake, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "token"
    token.write_text("pod-token-1\n")
    yield fake, rollout.KubeApi(f"http://127.0.0.1:{port}", token_file=token), token
    server.shutdown()
    thread.join(5)


def test_the_roll_patches_one_annotation_once(
    api: tuple[FakeApiServer, rollout.KubeApi, Path],
) -> None:
    fake, kube, _ = api
    assert rollout.roll(kube, "bigbertha", "bigbertha-vllm", "models:/bigbertha-llm/9") is True
    ((content_type, patch),) = fake.patches
    assert content_type == "application/strategic-merge-patch+json"
    assert patch == {
        "spec": {
            "template": {
                "metadata": {"annotations": {rollout.ANNOTATION: "models:/bigbertha-llm/9"}}
            }
        }
    }
    annotations = fake.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"checksum/config": "abc", rollout.ANNOTATION: "models:/bigbertha-llm/9"}
    # Every other replica's sidecar asks for the same base: nothing more happens.
    assert rollout.roll(kube, "bigbertha", "bigbertha-vllm", "models:/bigbertha-llm/9") is False
    assert len(fake.patches) == 1 and fake.deployment["metadata"]["generation"] == 2


def test_the_token_is_read_per_call_and_a_refusal_names_the_role(
    api: tuple[FakeApiServer, rollout.KubeApi, Path],
) -> None:
    fake, kube, token = api
    fake.token = "pod-token-2"  # the kubelet rotated the projected token
    with pytest.raises(ConfigError, match="401 .*Role must allow get and patch"):
        rollout.roll(kube, "bigbertha", "bigbertha-vllm", "models:/m/1")
    token.write_text("pod-token-2")
    assert rollout.roll(kube, "bigbertha", "bigbertha-vllm", "models:/m/1") is True
    with pytest.raises(ConfigError, match="404"):
        rollout.roll(kube, "bigbertha", "another-deployment", "models:/m/1")


def test_an_unreachable_api_is_transient(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    kube = rollout.KubeApi(f"http://127.0.0.1:{free_port()}", token_file=token)
    with pytest.raises(ServiceUnavailable, match="Kubernetes API GET"):
        rollout.roll(kube, "ns", "d", "models:/m/1")


def test_outside_a_pod_the_roll_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="rollOnMergedChampion"):
        rollout.KubeApi.in_cluster()
