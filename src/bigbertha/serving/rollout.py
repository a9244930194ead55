"""Roll the tier's Deployment onto another base model (a merged champion, or back from one).

A merged model cannot be hot-loaded like an adapter: vLLM has to start on the new weights. The
sidecar therefore sets one pod-template annotation of its own Deployment,
``bigbertha.io/base-model: models:/<name>/<version>``, the way ``kubectl rollout restart`` sets
its own: the Deployment replaces its pods under its strategy (templates/serving/deployment.yaml),
and each new pod's init step reads the annotation through the downward API
(BIGBERTHA_SERVING__BASE_OVERRIDE) and fetches that base (`basemodel`). Every replica's sidecar
computes the same value, so after the first patch the others find it set and do nothing. Helm
and Argo CD leave alone a field they never set (a live-only annotation is not drift).

The Kubernetes API is called with the pod's projected service-account token (only the sidecar
mounts it); the Role allows get and patch on this one Deployment (templates/serving/role.yaml).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx

from bigbertha.core.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

ANNOTATION = "bigbertha.io/base-model"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApi:
    """The two Deployment calls the roll needs, authenticated with a service-account token."""

    def __init__(
        self,
        url: str,
        *,
        token_file: Path,
        ca_file: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token_file = token_file
        verify: bool | str = str(ca_file) if ca_file else True
        self._http = httpx.Client(
            base_url=self.url, verify=verify, timeout=30.0, transport=transport
        )

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = SERVICE_ACCOUNT / "token"
        if not host or not token.is_file():
            raise ConfigError(
                "not in a pod with a service-account token: a merged champion needs "
                "serving.sync.rollOnMergedChampion (its Role and token) to roll the tier"
            )
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token_file=token, ca_file=SERVICE_ACCOUNT / "ca.crt")

    def _path(self, namespace: str, deployment: str) -> str:
        return f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}"

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        # Read per call: the kubelet rotates a projected token.
        token = self._token_file.read_text(encoding="utf-8").strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _send(self, request: httpx.Request) -> httpx.Response:
        what = f"{request.method} {self.url}{request.url.path}"
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"Kubernetes API {what}: {exc or type(exc).__name__}") from exc
        if response.status_code in (401, 403, 404):
            raise ConfigError(
                f"Kubernetes API {what}: {response.status_code} (the sidecar's Role must allow "
                "get and patch on its own Deployment)"
            )
        if response.status_code >= 300:
            raise ServiceUnavailable(f"Kubernetes API {what}: {response.status_code}")
        return response

    def pod_template_annotation(self, namespace: str, deployment: str, key: str) -> str | None:
        request = self._http.build_request(
            "GET", self._path(namespace, deployment), headers=self._headers()
        )
        doc = self._send(request).json()
        annotations = doc.get("spec", {}).get("template", {}).get("metadata", {})
        value = (annotations.get("annotations") or {}).get(key)
        return str(value) if value is not None else None

    def set_pod_template_annotation(
        self, namespace: str, deployment: str, key: str, value: str
    ) -> None:
        patch = {"spec": {"template": {"metadata": {"annotations": {key: value}}}}}
        request = self._http.build_request(
            "PATCH",
            self._path(namespace, deployment),
            json=patch,
            headers=self._headers("application/strategic-merge-patch+json"),
        )
        self._send(request)


def roll(api: KubeApi, namespace: str, deployment: str, base_ref: str) -> bool:
    """Make the Deployment's pods serve `base_ref`; False when it already asks for it."""
    if api.pod_template_annotation(namespace, deployment, ANNOTATION) == base_ref:
        return False
    api.set_pod_template_annotation(namespace, deployment, ANNOTATION, base_ref)
    log.warning("rolling deployment %s/%s onto base model %s", namespace, deployment, base_ref)
    return True
