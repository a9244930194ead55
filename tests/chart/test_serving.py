"""The inference tier's objects (templates/serving/, templates/networkpolicy/serving.yaml): every
wire between vLLM, its init step, its adapter sidecar, the chatbot, Prometheus and the API
server connects, to names and paths the code really uses."""

from __future__ import annotations

import re
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest

from bigbertha.core.settings import Settings
from bigbertha.serving import basemodel, rollout
from bigbertha.serving.sidecar import Sidecar, _handler
from tests.chart import cluster
from tests.chart.render import deep_merge, env_values, find, one, render, render_raw, replicas

PROD = env_values("prod")
TIER = "bigbertha-vllm"

#: A Secret's value in these renders: as long as a cookie secret must be.
STAND_IN = "a-secret-value-standing-in-for-the-real-one"


def _prod(**overrides: Any) -> list[dict[str, Any]]:
    return render(deep_merge(PROD, overrides))


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", TIER)["spec"]["template"]["spec"]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _arg(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return str(args[args.index(flag) + 1])


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _settings_of(docs: list[dict[str, Any]], container: dict[str, Any], mp: Any) -> Settings:
    """The Settings a container's process loads: the settings ConfigMap, then its own env (a
    Secret's value stands in as STAND_IN, a missing pod annotation as Kubernetes gives it: "")."""
    from bigbertha.core import settings as settings_mod

    for name in [n for n in __import__("os").environ if n.startswith("BIGBERTHA_")]:
        mp.delenv(name)
    for name, value in one(docs, "ConfigMap", "bigbertha-settings")["data"].items():
        mp.setenv(name, value)
    for name, value in _env(container).items():
        if name.startswith("BIGBERTHA_") and name != "BIGBERTHA_HOME":
            mp.setenv(
                name, value if isinstance(value, str) else STAND_IN * ("secretKeyRef" in value)
            )
    return settings_mod.load()


# --- on where it should be, off elsewhere ------------------------------------------------------


@pytest.mark.parametrize("env", ["default", "dev", "local"])
def test_the_tier_is_prod_only(env: str) -> None:
    docs = render(env_values(env))
    assert [d for d in docs if "/templates/serving/" in d["__template"]] == []
    data = one(docs, "ConfigMap", "bigbertha-settings")["data"]
    chatbot = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    assert data["BIGBERTHA_LLM__BACKEND"] == "transformers"  # the chatbot loads its own model
    assert not {"BIGBERTHA_LLM__BACKEND", "BIGBERTHA_LLM__API_BASE"} & set(
        _env(chatbot["containers"][0])
    )


def test_prod_serves_the_pinned_vllm_image_on_gpu_nodes() -> None:
    pod = _pod(_prod())
    vllm = _container(pod, "vllm")
    assert vllm["image"] == "docker.io/vllm/vllm-openai:v0.33.0"
    assert vllm["command"] == ["vllm", "serve"]
    gpus = {"nvidia.com/gpu": PROD["serving"].get("gpus", 1)}
    assert gpus.items() <= vllm["resources"]["requests"].items()
    assert gpus.items() <= vllm["resources"]["limits"].items()
    assert _arg(vllm, "--tensor-parallel-size") == str(gpus["nvidia.com/gpu"])
    assert pod["nodeSelector"] == PROD["serving"]["nodeSelector"]
    assert pod["tolerations"] == PROD["serving"]["tolerations"]
    digest = "sha256:" + "a" * 64
    pinned = _container(_pod(_prod(serving={"image": {"digest": digest}})), "vllm")
    assert pinned["image"] == f"docker.io/vllm/vllm-openai:v0.33.0@{digest}"


def test_lora_is_on_with_the_limits_from_values_and_runtime_loading() -> None:
    docs = _prod(serving={"lora": {"maxRank": 32, "maxLoras": 3, "maxCpuLoras": 6}})
    vllm = _container(_pod(docs), "vllm")
    assert "--enable-lora" in vllm["args"]
    assert (_arg(vllm, "--max-lora-rank"), _arg(vllm, "--max-loras")) == ("32", "3")
    assert _arg(vllm, "--max-cpu-loras") == "6"
    env = _env(vllm)
    # vLLM 0.33.0's envs.py accepts "1" or "true"; the resolver plugin's entry-point name.
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    assert env["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] in _mounts(vllm)  # it must exist at startup


def test_vllm_runs_restricted_with_every_writable_path_an_emptydir() -> None:
    pod = _pod(_prod())
    vllm = _container(pod, "vllm")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert vllm["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = _mounts(vllm)
    assert set(mounts) == {"/home/vllm", "/tmp", "/dev/shm", "/models", "/adapters"}
    assert mounts["/models"]["readOnly"] and mounts["/adapters"]["readOnly"]
    assert _env(vllm)["HOME"] == "/home/vllm" and _env(vllm)["HF_HUB_OFFLINE"] == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    for path in ("/home/vllm", "/tmp", "/models", "/adapters"):
        assert "sizeLimit" in volumes[mounts[path]["name"]]["emptyDir"], path
    assert "HF_TOKEN" not in _env(vllm), "vLLM runs offline; only the init step downloads"


def test_probes_give_the_model_load_a_long_budget_and_hit_real_routes() -> None:
    pod = _pod(_prod(serving={"startupSeconds": 2400}))
    vllm, sync = _container(pod, "vllm"), _container(pod, "adapter-sync")
    startup = vllm["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] == 2400
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    # The sidecar's probes are routes its status server answers.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Sidecar(Settings(), None)))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for kind in ("readinessProbe", "livenessProbe"):
            probe = sync[kind]["httpGet"]
            assert probe["port"] == "metrics"
            url = f"http://127.0.0.1:{server.server_address[1]}{probe['path']}"
            assert httpx.get(url).status_code != 404, probe
    finally:
        server.shutdown()


# --- the init step, the sidecar and vLLM agree on paths, ports and names ----------------------


def test_init_step_sidecar_and_vllm_share_one_model_directory_and_args_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _prod()
    pod = _pod(docs)
    vllm = _container(pod, "vllm")
    init = _settings_of(docs, _container(pod, "fetch-base-model"), monkeypatch)
    assert init.serving.base_model == PROD["serving"]["model"]["ref"]
    assert vllm["args"][0] == init.serving.model_dir  # vLLM's --model
    args_file = Path(init.serving.model_dir).parent / basemodel.VLLM_ARGS
    assert _arg(vllm, "--config") == str(args_file)
    assert str(Path(init.serving.model_dir).parent) in _mounts(_container(pod, "fetch-base-model"))
    override = _env(_container(pod, "fetch-base-model"))["BIGBERTHA_SERVING__BASE_OVERRIDE"]
    assert override["fieldRef"]["fieldPath"] == f"metadata.annotations['{rollout.ANNOTATION}']"

    sync = _settings_of(docs, _container(pod, "adapter-sync"), monkeypatch)
    assert sync.serving.model_dir == init.serving.model_dir  # the marker of what is served
    assert sync.serving.adapters_dir == _env(vllm)["VLLM_LORA_RESOLVER_CACHE_DIR"]
    assert not _mounts(_container(pod, "adapter-sync"))[sync.serving.adapters_dir].get("readOnly")
    assert sync.serving.url == f"http://127.0.0.1:{vllm['ports'][0]['containerPort']}"
    ports = {p["name"]: p["containerPort"] for p in _container(pod, "adapter-sync")["ports"]}
    assert ports == {"metrics": sync.serving.status_port}
    assert sync.serving.api_key is not None
    assert (
        _env(_container(pod, "adapter-sync"))["BIGBERTHA_SERVING__API_KEY"]
        == _env(vllm)["VLLM_API_KEY"]
    )


def test_the_chatbot_asks_the_tier_for_its_base_and_sends_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _prod()
    chatbot = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    settings = _settings_of(docs, chatbot["containers"][0], monkeypatch)
    service = one(docs, "Service", TIER)
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    assert settings.llm.backend == "openai"
    assert settings.llm.api_base == f"http://{TIER}.bigbertha.svc:{port}/v1"
    sync = _env(_container(_pod(docs), "adapter-sync"))
    assert settings.llm.model == sync["BIGBERTHA_SERVING__SERVED_NAME"]
    key = _env(chatbot["containers"][0])["BIGBERTHA_LLM__API_KEY"]
    assert key == _env(_container(_pod(docs), "vllm"))["VLLM_API_KEY"]
    # The chatbot follows the champion; the sidecar loads what that alias names.
    assert settings.chat.champion_alias == "champion"


def test_the_chatbot_shrinks_to_what_the_ui_needs() -> None:
    """No model in the chatbot pod any more: a fraction of the 12 GiB the in-process 7B took
    (docs/gpu.md has the measured resident memory of both)."""
    chatbot = one(_prod(), "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    resources = chatbot["containers"][0]["resources"]
    assert _gib(resources["limits"]["memory"]) <= 4 and "nvidia.com/gpu" not in resources["limits"]
    assert _gib(resources["requests"]["memory"]) <= 2


def _gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) / (1024 if unit == "Mi" else 1)


# --- the roll for a merged champion: least privilege ------------------------------------------


def test_only_the_sidecar_holds_a_token_that_may_patch_only_this_deployment() -> None:
    docs = _prod()
    pod = _pod(docs)
    assert pod["automountServiceAccountToken"] is False
    token_dir = str(rollout.SERVICE_ACCOUNT)
    holders = [
        c["name"] for c in pod["containers"] + pod["initContainers"] if token_dir in _mounts(c)
    ]
    assert holders == ["adapter-sync"]
    sync = _env(_container(pod, "adapter-sync"))
    assert sync["BIGBERTHA_SERVING__DEPLOYMENT"] == TIER
    assert sync["BIGBERTHA_SERVING__NAMESPACE"] == "bigbertha"
    role = one(docs, "Role", TIER)
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [TIER],
            "verbs": ["get", "patch"],
        }
    ]
    binding = one(docs, "RoleBinding", TIER)
    assert binding["roleRef"]["name"] == TIER
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "bigbertha"}
    ]
    egress = one(docs, "NetworkPolicy", TIER)["spec"]["egress"]
    assert any({"port": 6443, "protocol": "TCP"} in rule.get("ports", []) for rule in egress)


def test_without_rolls_no_role_no_token_and_no_api_server() -> None:
    docs = _prod(serving={"sync": {"rollOnMergedChampion": False}})
    pod = _pod(docs)
    assert find(docs, "Role", TIER) == [] and find(docs, "RoleBinding", TIER) == []
    assert "kube-api-access" not in {v["name"] for v in pod["volumes"]}
    assert "BIGBERTHA_SERVING__DEPLOYMENT" not in _env(_container(pod, "adapter-sync"))
    egress = one(docs, "NetworkPolicy", TIER)["spec"]["egress"]
    assert not any({"port": 6443, "protocol": "TCP"} in r.get("ports", []) for r in egress)


# --- metrics, disruption budget, network ------------------------------------------------------


def test_prometheus_scrapes_vllm_through_the_sidecar_port() -> None:
    docs = _prod()
    monitor, service = one(docs, "ServiceMonitor", TIER), one(docs, "Service", TIER)
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["metadata"]["labels"]["release"] == "bigbertha"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }
    assert find(_prod(serving={"serviceMonitor": {"enabled": False}}), "ServiceMonitor", TIER) == []


def test_a_node_drain_takes_one_vllm_pod_at_a_time() -> None:
    docs = _prod()
    pdb = one(docs, "PodDisruptionBudget", TIER)
    deploy = one(docs, "Deployment", TIER)
    assert replicas(docs, deploy) > 1 and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    # Rolling without a surge: a GPU never has to hold a second copy of the model.
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    one_pod = {"replicas": 1, "autoscaling": {"enabled": False}}
    assert find(_prod(serving=one_pod), "PodDisruptionBudget", TIER) == []


def test_only_the_chatbot_reaches_the_api_port_and_prometheus_the_metrics() -> None:
    """Evaluated with Kubernetes' semantics on every pod the release runs (tests/chart/cluster)."""
    docs = _prod()
    policies = find(docs, "NetworkPolicy")
    pods = cluster.pods(docs, "bigbertha")
    (tier,) = [p for p in pods if p.origin == f"Deployment/{TIER}"]
    api, metrics = tier.ports["http"], tier.ports["metrics"]

    def reach(port: int) -> set[str]:
        return {
            p.origin
            for p in pods
            if p is not tier and cluster.allows(policies, p, tier, port).allowed
        }

    assert reach(api) == {"Deployment/bigbertha-chatbot"}
    # Prometheus scrapes through the sidecar; the `helm test` pod asks it /readyz.
    assert {o.split("/")[0] for o in reach(metrics)} == {"Prometheus", "Pod"}
    assert "Pod/bigbertha-test-endpoints" in reach(metrics)
    stranger = cluster.Pod("another tenant", "elsewhere", {"app": "x"})
    assert not cluster.allows(policies, stranger, tier, api).allowed


def _hub_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Egress rules for HTTPS alone (the API server's rule also lists 443, with 6443)."""
    egress = one(docs, "NetworkPolicy", TIER)["spec"]["egress"]
    return [r for r in egress if r.get("ports") == [{"port": 443, "protocol": "TCP"}]]


def test_the_hub_is_reachable_only_for_a_hub_base_model() -> None:
    hub = "meta-llama/Llama-2-7b-chat-hf"
    on_the_hub = {
        "serving": {"model": {"ref": hub, "servedName": ""}},
        # The trainer downloads the same id: the render demands egress for it too.
        "settings": {"finetune": {"base_model": hub}},
        "networkPolicy": {"extraEgress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]},
    }
    assert len(_hub_rules(_prod(**on_the_hub))) == 1
    cidrs = {"serving": {"networkPolicy": {"hubCIDRs": ["198.51.100.0/24"]}}}
    (rule,) = _hub_rules(_prod(**deep_merge(on_the_hub, cidrs)))
    assert rule["to"] == [{"ipBlock": {"cidr": "198.51.100.0/24"}}]


def test_prod_serves_the_base_from_object_storage_without_hub_egress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As air-gapped: the init step streams the pre-fetched copy the trainer also uses."""
    docs = _prod()
    ref = PROD["serving"]["model"]["ref"]
    assert ref.startswith("s3://") and ref == PROD["settings"]["finetune"]["base_model"]
    assert _hub_rules(docs) == []
    init = _container(_pod(docs), "fetch-base-model")
    settings = _settings_of(docs, init, monkeypatch)
    assert settings.serving.base_model == ref and settings.s3.access_key is not None
    chatbot = one(docs, "Deployment", "bigbertha-chatbot")["spec"]["template"]["spec"]
    served = PROD["serving"]["model"]["servedName"]
    assert _env(chatbot["containers"][0])["BIGBERTHA_LLM__MODEL"] == served


# --- render-time rules ------------------------------------------------------------------------


def _fails(values: dict[str, Any], message: str) -> None:
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError), match=re.escape(message)):
        render_raw(deep_merge(PROD, values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serving": {"model": {"ref": ""}}}, "set serving.model.ref"),
        ({"serving": {"model": {"servedName": ""}}}, "set serving.model.servedName"),
        (
            {"settings": {"finetune": {"base_model": "s3://bigbertha-artifacts/models/other/"}}},
            "adapters must be trained on the base the tier serves",
        ),
        ({"serving": {"lora": {"maxLoras": 4, "maxCpuLoras": 2}}}, "maxCpuLoras must be at least"),
        ({"settings": {"finetune": {"lora_r": 64}}}, "lora_r 64 exceeds serving.lora.maxRank 16"),
        ({"serving": {"auth": {"existingSecret": ""}}}, "set serving.auth.existingSecret"),
    ],
)
def test_a_tier_that_cannot_work_fails_the_render(values: dict[str, Any], message: str) -> None:
    _fails(values, message)


def test_a_rank_vllm_does_not_offer_is_rejected_by_the_schema() -> None:
    _fails({"serving": {"lora": {"maxRank": 24}}}, "maxRank")


def test_generated_api_key_where_secrets_are_generated() -> None:
    values = deep_merge(
        env_values("dev"),
        {
            "serving": {"enabled": True, "model": {"ref": "s3://models/m/", "servedName": "m"}},
            "settings": {"finetune": {"base_model": "s3://models/m/"}},
        },
    )
    secret = one(render(values), "Secret", TIER)
    assert set(secret["data"]) == {"apiKey"}
