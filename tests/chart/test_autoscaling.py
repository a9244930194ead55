"""Scaling on load (docs/gpu.md, "Scaling on load"): KEDA ScaledObjects for the chatbot (CPU and
answers in flight) and the vLLM tier (requests waiting), or a plain CPU HPA for the chatbot;
the autoscaler owns the replica count, the PodDisruptionBudgets still select the pods, and a
stopping pod keeps answering for the longest answer settings.llm.max_new_tokens allows."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart import crds
from tests.chart.promtool import run_promtool
from tests.chart.render import (
    API_VERSIONS,
    ENVS,
    ROOT,
    clean,
    deep_merge,
    env_values,
    find,
    one,
    render,
    render_env,
    render_raw,
    replicas,
)
from tests.services import require_binary

CHATBOT = "bigbertha-chatbot"
VLLM = "bigbertha-vllm"


def _values(env: str) -> dict[str, Any]:
    """The values a render of `env` sees: values.yaml under the environment's files."""
    return deep_merge(yaml.safe_load((ROOT / "values.yaml").read_text()), env_values(env))


def _prod(**overrides: Any) -> list[dict[str, Any]]:
    return render(deep_merge(env_values("prod"), overrides))


def _trigger(scaled: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [t for t in scaled["spec"]["triggers"] if t["type"] == kind]
    return found


def test_prod_scales_the_chatbot_and_the_vllm_tier(prod_docs: list[dict[str, Any]]) -> None:
    values = _values("prod")
    for name, key in ((CHATBOT, "chatbot"), (VLLM, "serving")):
        scaled = one(prod_docs, "ScaledObject", name)
        deploy = one(prod_docs, "Deployment", name)
        spec = scaled["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        auto = values[key]["autoscaling"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
            auto["minReplicas"],
            auto["maxReplicas"],
        )
        # The HPA KEDA creates owns the count: a `replicas` here would fight it on every upgrade.
        assert "replicas" not in deploy["spec"], name
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        down = behavior["scaleDown"]
        assert down["stabilizationWindowSeconds"] == auto["scaleDownStabilizationSeconds"] >= 300
        assert down["policies"] == [
            {"type": "Pods", "value": 1, "periodSeconds": down["policies"][0]["periodSeconds"]}
        ]
        # Still drained one pod at a time: the PDB selects exactly the scaled pods.
        pdb = one(prod_docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert replicas(prod_docs, deploy) == auto["minReplicas"] > 1
    assert (
        values["chatbot"]["autoscaling"]["minReplicas"],
        values["chatbot"]["autoscaling"]["maxReplicas"],
    ) == (3, 10)
    assert (
        values["serving"]["autoscaling"]["minReplicas"],
        values["serving"]["autoscaling"]["maxReplicas"],
    ) == (2, 4)

    chat = one(prod_docs, "ScaledObject", CHATBOT)
    cpu = _trigger(chat, "cpu")
    assert cpu["metricType"] == "Utilization"
    assert cpu["metadata"] == {
        "value": str(values["chatbot"]["autoscaling"]["targetCPUUtilization"]),
        "containerName": "chatbot",
    }
    inflight = _trigger(chat, "prometheus")
    assert inflight["metricType"] == "AverageValue"  # the query's total over the pods
    assert (
        float(inflight["metadata"]["threshold"])
        == values["chatbot"]["autoscaling"]["answersInFlightPerPod"]
    )
    assert "bigbertha_chat_latency_seconds_sum" in inflight["metadata"]["query"]
    waiting = _trigger(one(prod_docs, "ScaledObject", VLLM), "prometheus")
    assert waiting["metricType"] == "AverageValue"
    assert (
        float(waiting["metadata"]["threshold"])
        == values["serving"]["autoscaling"]["waitingRequestsPerPod"]
    )
    assert (
        waiting["metadata"]["query"]
        == 'sum(vllm:num_requests_waiting{namespace="bigbertha",service="bigbertha-vllm"})'
    )
    # The scraped `service` label is the name of the Service the vLLM ServiceMonitor selects.
    one(prod_docs, "Service", VLLM)
    one(prod_docs, "ServiceMonitor", VLLM)


def test_triggers_query_the_prometheus_the_canary_reads(prod_docs: list[dict[str, Any]]) -> None:
    (canary,) = [
        e["value"]
        for wt in find(prod_docs, "WorkflowTemplate")
        for tpl in wt["spec"]["templates"]
        for e in (tpl.get("container") or {}).get("env") or []
        if e["name"] == "BIGBERTHA_CANARY__PROMETHEUS_URL"
    ]
    for scaled in find(prod_docs, "ScaledObject"):
        assert _trigger(scaled, "prometheus")["metadata"]["serverAddress"] == canary
    url = "http://prometheus.monitoring.svc:9090"
    docs = _prod(monitoring={"prometheusUrl": url})
    assert {
        _trigger(s, "prometheus")["metadata"]["serverAddress"] for s in find(docs, "ScaledObject")
    } == {url}


def test_scaled_objects_match_the_keda_crd(
    prod_docs: list[dict[str, Any]], shared_dir: Path
) -> None:
    scaled = find(prod_docs, "ScaledObject")
    assert len(scaled) == 2
    errors = [e for doc in scaled for e in crds.errors(shared_dir, doc)]
    assert not errors, errors
    # The closed schema notices a misspelt field (the API server would drop it silently).
    broken = clean(scaled[0])
    broken["spec"]["minReplicas"] = 3
    assert crds.errors(shared_dir, broken)


def test_the_hpa_engine_scales_the_chatbot_on_cpu() -> None:
    docs = _prod(chatbot={"autoscaling": {"engine": "hpa"}})
    assert find(docs, "ScaledObject", CHATBOT) == []
    hpa = one(docs, "HorizontalPodAutoscaler", CHATBOT)
    kubernetes_validate.validate(clean(hpa), "1.30.0", strict=True)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": CHATBOT,
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 10)
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" not in one(docs, "Deployment", CHATBOT)["spec"]
    # The plain HPA needs no KEDA: it renders on a cluster without the CRD.
    no_keda = [v for v in API_VERSIONS if not v.startswith("keda.sh")]
    values = deep_merge(
        env_values("prod"),
        {
            "chatbot": {"autoscaling": {"engine": "hpa"}},
            "serving": {"autoscaling": {"enabled": False}},
        },
    )
    assert find(render(values, api_versions=no_keda), "HorizontalPodAutoscaler", CHATBOT)


def test_off_by_default_the_deployments_keep_their_replicas() -> None:
    docs = render_env("default")
    assert find(docs, "ScaledObject") == [] and find(docs, "HorizontalPodAutoscaler", CHATBOT) == []
    assert one(docs, "Deployment", CHATBOT)["spec"]["replicas"] == 1
    prod = _prod(
        chatbot={"autoscaling": {"enabled": False}}, serving={"autoscaling": {"enabled": False}}
    )
    assert find(prod, "ScaledObject") == []
    assert one(prod, "Deployment", CHATBOT)["spec"]["replicas"] == 3
    assert one(prod, "Deployment", VLLM)["spec"]["replicas"] == 2
    # An autoscaler that may go down to one pod gets no PDB (it would block every drain).
    one_pod = _prod(
        chatbot={"autoscaling": {"minReplicas": 1}}, serving={"autoscaling": {"minReplicas": 1}}
    )
    assert find(one_pod, "PodDisruptionBudget", CHATBOT) == []
    assert find(one_pod, "PodDisruptionBudget", VLLM) == []


@pytest.mark.parametrize("key", ["chatbot", "serving"])
def test_a_cluster_without_keda_fails_naming_the_value(key: str) -> None:
    no_keda = [v for v in API_VERSIONS if not v.startswith("keda.sh")]
    other = "serving" if key == "chatbot" else "chatbot"
    values = deep_merge(env_values("prod"), {other: {"autoscaling": {"enabled": False}}})
    with pytest.raises(
        helm.HelmRenderError, match=re.escape(f"{key}.autoscaling.enabled=false")
    ) as failed:
        render_raw(values, api_versions=no_keda)
    assert "keda.sh/v1alpha1/ScaledObject CRD" in str(failed.value)
    assert render({**values, "crdCheck": False}, api_versions=[]), "crdCheck=false renders offline"


@pytest.mark.parametrize("env", ENVS)
def test_a_stopping_pod_outlasts_the_longest_answer(env: str) -> None:
    """Scale-down never cuts a streaming answer: the pod leaves the Service at once, gets SIGTERM
    only after preStop has waited the longest answer (max_new_tokens at the slowest documented
    generation speed), and is killed only after a margin beyond it."""
    values = _values(env)
    tokens = values["settings"]["llm"]["max_new_tokens"]
    shutdown = values["chatbot"]["shutdown"]
    bound = tokens / shutdown["minTokensPerSecond"]
    docs = render_env(env)
    names = [CHATBOT] + ([VLLM] if values["serving"]["enabled"] else [])
    for name in names:
        pod = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] in ("chatbot", "vllm")]
        wait = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = pod["terminationGracePeriodSeconds"]
        assert wait >= bound, (
            f"{env} {name}: preStop {wait}s < {tokens} tokens at {shutdown['minTokensPerSecond']}/s"
        )
        assert grace >= bound + shutdown["marginSeconds"], f"{env} {name}: grace {grace}s"
        assert grace > wait, f"{env} {name}: SIGTERM must come before the kill"
    if env == "prod":
        assert tokens == 512 and math.ceil(bound) == 52
        assert (
            one(docs, "Deployment", CHATBOT)["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"
            ]
            == 67
        )
    # Raising max_new_tokens lengthens the grace with it: it is derived, not hard-coded.
    longer = _prod(settings={"llm": {"max_new_tokens": 2048}})
    pod = one(longer, "Deployment", CHATBOT)["spec"]["template"]["spec"]
    assert (
        pod["terminationGracePeriodSeconds"]
        >= 2048 / _values("prod")["chatbot"]["shutdown"]["minTokensPerSecond"]
    )


def _queries(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {
        s["metadata"]["name"]: _trigger(s, "prometheus")["metadata"]["query"]
        for s in find(docs, "ScaledObject")
    }


def _recording_rules(docs: list[dict[str, Any]]) -> str:
    """A rule file recording each trigger's query exactly as KEDA sends it."""
    records = {
        CHATBOT: "bigbertha:autoscaling_chatbot_answers_in_flight",
        VLLM: "bigbertha:autoscaling_vllm_requests_waiting",
    }
    rules = [{"record": records[name], "expr": query} for name, query in _queries(docs).items()]
    return yaml.safe_dump({"groups": [{"name": "autoscaling", "rules": rules}]}, sort_keys=False)


def test_trigger_queries_pass_promtool_check(
    prod_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    promtool = require_binary("promtool")
    (tmp_path / "rules.yaml").write_text(_recording_rules(prod_docs))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


def test_trigger_queries_yield_the_per_replica_load(
    prod_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """promtool evaluates the queries on sample series: the vLLM query sums the waiting requests
    of this release's pods only, the chatbot query counts answers in flight once however many
    exporter replicas serve the same totals. KEDA's AverageValue divides by the pods: with 2
    vLLM pods and 14 waiting the per-replica value is 7, over the threshold of 4, so the HPA
    asks for ceil(14 / 4) = 4 pods."""
    vllm = (
        'vllm:num_requests_waiting{namespace="bigbertha",service="bigbertha-vllm",pod="%s",'
        'model_name="Llama-2-7b-chat-hf"}'
    )
    latency = (
        'bigbertha_chat_latency_seconds_sum{job="bigbertha-exporter",namespace="bigbertha",'
        'instance="%s",pod="%s",model="m",model_version="%s"}'
    )
    waiting = "vllm:num_requests_waiting{%s}"
    series = [
        {"series": vllm % "bigbertha-vllm-a", "values": "0 0 0 0 0 9x5"},
        {"series": vllm % "bigbertha-vllm-b", "values": "0 0 0 0 0 5x5"},
        # Another release's vLLM, and this one's in another namespace: not ours to scale on.
        {
            "series": waiting % 'namespace="bigbertha",service="other-vllm",pod="x"',
            "values": "100x10",
        },
        {
            "series": waiting % 'namespace="team-b",service="bigbertha-vllm",pod="y"',
            "values": "100x10",
        },
    ]
    for exporter in ("a", "b"):  # two exporter replicas serve the same totals
        series += [
            # 2 and 1 seconds of answering per second: 3 answers in flight on average.
            {"series": latency % (exporter, exporter, "1"), "values": "0+120x10"},
            {"series": latency % (exporter, exporter, "2"), "values": "0+60x10"},
        ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": "bigbertha:autoscaling_vllm_requests_waiting",
                    "eval_time": "7m",
                    "exp_samples": [
                        {"labels": "bigbertha:autoscaling_vllm_requests_waiting", "value": 14}
                    ],
                },
                {
                    "expr": "bigbertha:autoscaling_vllm_requests_waiting / 2",
                    "eval_time": "7m",
                    "exp_samples": [{"labels": "{}", "value": 7}],
                },
                {
                    "expr": "bigbertha:autoscaling_vllm_requests_waiting",
                    "eval_time": "2m",
                    "exp_samples": [
                        {"labels": "bigbertha:autoscaling_vllm_requests_waiting", "value": 0}
                    ],
                },
                {
                    "expr": "bigbertha:autoscaling_chatbot_answers_in_flight",
                    "eval_time": "8m",
                    "exp_samples": [
                        {"labels": "bigbertha:autoscaling_chatbot_answers_in_flight", "value": 3}
                    ],
                },
            ],
        }
    ]
    run_promtool(tmp_path, _recording_rules(prod_docs), tests)
    values = _values("prod")["serving"]["autoscaling"]
    assert math.ceil(14 / values["waitingRequestsPerPod"]) == values["maxReplicas"]
