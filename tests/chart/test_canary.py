"""The live canary in the chart: the retraining DAG's canary step (it parses against the real
CLI), its deadline, its way to Prometheus (the address kube-prometheus-stack really renders),
the render-time checks, and the stuck-canary alert proven with promtool."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from helm_python import HelmError
from typer.exceptions import TyperException

from bigbertha.cli import app
from bigbertha.core.errors import ExitCode
from bigbertha.core.settings import Settings
from bigbertha.local.gateway import retry_wanted
from tests.chart.promtool import rules_yaml, run_promtool
from tests.chart.render import (
    NAMESPACE,
    RELEASE,
    ROOT,
    find,
    one,
    render,
    render_env,
)

CANARY = {"settings": {"canary": {"share": 0.2, "deadline_seconds": 7200}}}
JOB = f"{RELEASE}-exporter"


def dag(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The retraining WorkflowTemplate's spec and its templates by name."""
    spec = one(docs, "WorkflowTemplate", f"{RELEASE}-finetune")["spec"]
    return spec, {t["name"]: t for t in spec["templates"]}


def tasks(spec: dict[str, Any], templates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {t["name"]: t for t in templates[spec["entrypoint"]]["dag"]["tasks"]}


@pytest.fixture(scope="module")
def canary_docs() -> list[dict[str, Any]]:
    return render(CANARY)


def test_without_a_share_the_gate_promotes_and_nothing_waits() -> None:
    docs = render_env("default")
    spec, templates = dag(docs)
    assert "canary" not in tasks(spec, templates) and "canary" not in templates
    defaults = yaml.safe_load((ROOT / "values.yaml").read_text())
    assert (
        spec["activeDeadlineSeconds"] == defaults["workflows"]["finetune"]["activeDeadlineSeconds"]
    )
    assert not [
        r for r in find(docs, "PrometheusRule") if r["metadata"]["name"].endswith("-canary")
    ]
    egress = one(docs, "NetworkPolicy", f"{RELEASE}-workflows")["spec"]["egress"]
    assert all(p["port"] != 9090 for rule in egress for p in rule.get("ports", []))


def test_with_a_share_the_canary_step_follows_the_gate(canary_docs: list[dict[str, Any]]) -> None:
    spec, templates = dag(canary_docs)
    assert tasks(spec, templates)["canary"]["depends"] == "promote.Succeeded"
    step = templates["canary"]
    args = step["container"]["args"]
    run = "s3://bigbertha-artifacts/retrain/{{workflow.name}}"
    promote_args = templates["promote"]["container"]["args"]
    # The canary reads the report the gate writes, and writes its own beside it.
    assert promote_args[promote_args.index("--report") + 1] == f"{run}/promotion.json"
    assert args[:5] == [
        "canary",
        "--promotion",
        f"{run}/promotion.json",
        "--report",
        f"{run}/canary.json",
    ]
    assert args[args.index("--workflow-name") + 1] == "{{workflow.name}}"  # lineage
    assert args[args.index("--alert-name") + 1] == "{{inputs.parameters.alert-name}}"
    # Bookkeeping: small, on any node, and retried only for the transient exit code.
    assert step["container"]["resources"] == templates["record-exit"]["container"]["resources"]
    assert "nodeSelector" not in step and "tolerations" not in step
    expression = step["retryStrategy"]["expression"]
    assert {c for c in [*ExitCode, 1] if retry_wanted(expression, "Failed", c)} == {69}
    # The Workflow's deadline leaves the canary its own on top of training.
    defaults = yaml.safe_load((ROOT / "values.yaml").read_text())
    training = defaults["workflows"]["finetune"]["activeDeadlineSeconds"]
    assert spec["activeDeadlineSeconds"] == training + 7200


def test_the_canary_step_parses_with_the_real_cli(canary_docs: list[dict[str, Any]]) -> None:
    _, templates = dag(canary_docs)
    args = templates["canary"]["container"]["args"]
    filled = [
        re.sub(r"\{\{([^}]+)\}\}", lambda m: {"workflow.name": "wf-1"}.get(m[1], '{"a":"b"}'), a)
        for a in args
    ]
    command = typer.main.get_command(app).commands[filled[0]]  # type: ignore[attr-defined]
    try:
        command.make_context(filled[0], filled[1:])
    except TyperException as exc:
        pytest.fail(f"`bigbertha {' '.join(filled)}` does not parse: {exc}")


def step_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The canary step's own env (the settings only it reads)."""
    _, templates = dag(docs)
    return {e["name"]: e["value"] for e in templates["canary"]["container"]["env"] if "value" in e}


def test_the_steps_settings_reach_prometheus_and_this_releases_exporter(
    canary_docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = one(canary_docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    assert not [k for k in data if "PROMETHEUS" in k]  # no other pod gets an address it can't use
    for name, value in {**data, **step_env(canary_docs)}.items():
        if name.startswith("BIGBERTHA_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.canary.share == 0.2 and settings.canary.deadline_seconds == 7200
    url = f"http://{RELEASE}-kube-prometheus-prometheus.{NAMESPACE}.svc:9090"
    assert settings.canary.prometheus_url == url
    # The same exporter the alert rules select.
    assert settings.canary.prometheus_selector == f'job="{JOB}",namespace="{NAMESPACE}"'
    rule = one(canary_docs, "PrometheusRule", f"{RELEASE}-alerts")
    assert settings.canary.prometheus_selector in rule["spec"]["groups"][0]["rules"][0]["expr"]
    egress = one(canary_docs, "NetworkPolicy", f"{RELEASE}-workflows")["spec"]["egress"]
    (to_prometheus,) = [r for r in egress if {"port": 9090, "protocol": "TCP"} in r["ports"]]
    (peer,) = to_prometheus["to"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_an_own_prometheus_address_replaces_the_stacks() -> None:
    values = {
        **CANARY,
        "monitoring": {"prometheusUrl": "https://prometheus.example.org"},
        "kube-prometheus-stack": {"enabled": False},
    }
    assert step_env(render(values))["BIGBERTHA_CANARY__PROMETHEUS_URL"] == (
        "https://prometheus.example.org"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kube-prometheus-stack": {"enabled": False}},
            "set kube-prometheus-stack.enabled=true or monitoring.prometheusUrl",
        ),
        ({"exporter": {"enabled": False}}, "set exporter.enabled=true"),
    ],
)
def test_a_canary_without_its_votes_fails_the_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        render({**CANARY, **values})
    render(values)  # without a canary the same values are fine


def prometheus_services(docs: list[dict[str, Any]]) -> dict[str, list[int]]:
    """kube-prometheus-stack's Prometheus Service(s): name -> ports."""
    return {
        d["metadata"]["name"]: [p["port"] for p in d["spec"]["ports"]]
        for d in find(docs, "Service")
        if d["metadata"].get("labels", {}).get("app", "").endswith("-prometheus")
    }


@pytest.mark.parametrize("release", ["bigbertha", "kube-prometheus-stack-eu", "llmops-production"])
def test_the_prometheus_address_is_the_service_the_subchart_renders(release: str) -> None:
    """Under any release name (kube-prometheus-stack names it after the release, truncated)."""
    docs = render(CANARY, release=release, namespace="ml")
    match = re.fullmatch(
        r"http://([^.]+)\.ml\.svc:(\d+)", step_env(docs)["BIGBERTHA_CANARY__PROMETHEUS_URL"]
    )
    assert match, step_env(docs)
    assert int(match[2]) in prometheus_services(docs)[match[1]]


def test_under_gitops_the_canary_reads_the_operator_applications_prometheus() -> None:
    """gitops/: kube-prometheus-stack is its own Application (release bigbertha, the same
    namespace), so the BigBertha Application names its Service in monitoring.prometheusUrl."""
    argocd = yaml.safe_load((ROOT / "gitops/values/argocd.yaml").read_text())
    url = argocd["monitoring"]["prometheusUrl"]
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
    assert match, url
    operator = render(CANARY, release="bigbertha")  # what the operator Application renders
    assert int(match[2]) in prometheus_services(operator)[match[1]]
    assert step_env(render({**argocd, **CANARY}))["BIGBERTHA_CANARY__PROMETHEUS_URL"] == url


# --- the stuck-canary alert ---------------------------------------------------------------------


def canary_rule(values: dict[str, Any]) -> dict[str, Any]:
    return one(render(values), "PrometheusRule", f"{RELEASE}-canary")


def test_the_stuck_alert_pages_and_has_a_runbook(canary_docs: list[dict[str, Any]]) -> None:
    rule = one(canary_docs, "PrometheusRule", f"{RELEASE}-canary")
    assert rule["metadata"]["labels"]["release"] == RELEASE
    (item,) = rule["spec"]["groups"][0]["rules"]
    assert item["alert"] == "BigBerthaCanaryStuck"
    assert item["labels"]["bigbertha_action"] == "page"  # never starts a retraining
    assert item["annotations"]["runbook_url"].endswith("#bigberthacanarystuck")
    anchors = re.findall(r"^## (.+)$", (ROOT / "docs" / "runbooks.md").read_text(), re.M)
    assert "BigBerthaCanaryStuck" in anchors
    assert f'job="{JOB}",namespace="{NAMESPACE}"' in item["expr"]
    off = render({**CANARY, "monitoring": {"rules": {"canaryStuck": {"enabled": False}}}})
    assert not [r for r in find(off, "PrometheusRule") if r["metadata"]["name"].endswith("-canary")]


def test_the_stuck_alert_fires_only_for_a_canary_without_votes_for_the_window(
    tmp_path: Path,
) -> None:
    values = {
        **CANARY,
        "monitoring": {"rules": {"canaryStuck": {"window": "30m", "for": "10m"}}},
    }
    rule = canary_rule(values)
    base = {"job": JOB, "namespace": NAMESPACE, "model": "bigbertha-llm"}

    def series(version: str, started_minute: int, votes: str | None) -> list[dict[str, str]]:
        labels = {**base, "model_version": version}
        out = [
            {
                # Started at minute `started_minute` (promtool's clock starts at unix time 0),
                # exported by two exporter replicas.
                "series": _series("bigbertha_canary_started_timestamp_seconds", labels, instance),
                "values": f"_x{started_minute} {started_minute * 60}x{120 - started_minute}",
            }
            for instance in ("a", "b")
        ]
        if votes is not None:
            labels = {**labels, "rating": "up"}
            out.append(
                {"series": _series("bigbertha_feedback_total", labels, "a"), "values": votes}
            )
        return out

    expected = {
        "namespace": NAMESPACE,
        "model": "bigbertha-llm",
        "model_version": "7",
        "severity": "warning",
        "alertname": "BigBerthaCanaryStuck",
        "bigbertha_action": "page",
        "bigbertha_release": RELEASE,
    }
    tests = [
        {  # No vote since it started: 30 min of silence + 10 min `for` -> fires at 40 min.
            "interval": "1m",
            "input_series": series("7", 0, "0x120"),
            "alert_rule_test": [
                {"eval_time": "35m", "alertname": "BigBerthaCanaryStuck", "exp_alerts": []},
                {
                    "eval_time": "45m",
                    "alertname": "BigBerthaCanaryStuck",
                    "exp_alerts": [{"exp_labels": expected}],
                },
            ],
        },
        {  # Nobody serves it at all (no vote series): the same.
            "interval": "1m",
            "input_series": series("7", 0, None),
            "alert_rule_test": [
                {
                    "eval_time": "45m",
                    "alertname": "BigBerthaCanaryStuck",
                    "exp_alerts": [{"exp_labels": expected}],
                },
            ],
        },
        {  # A vote every 20 minutes keeps it quiet.
            "interval": "1m",
            "input_series": series("7", 0, "0+0x19 1+0x19 2+0x19 3+0x19 4+0x19 5+0x19"),
            "alert_rule_test": [
                {"eval_time": "50m", "alertname": "BigBerthaCanaryStuck", "exp_alerts": []},
                {"eval_time": "100m", "alertname": "BigBerthaCanaryStuck", "exp_alerts": []},
            ],
        },
        {  # A young canary (started at minute 20) is not stuck at minute 45.
            "interval": "1m",
            "input_series": series("7", 20, "0x120"),
            "alert_rule_test": [
                {"eval_time": "45m", "alertname": "BigBerthaCanaryStuck", "exp_alerts": []},
                {
                    "eval_time": "65m",
                    "alertname": "BigBerthaCanaryStuck",
                    "exp_alerts": [{"exp_labels": expected}],
                },
            ],
        },
    ]
    assert "SUCCESS" in run_promtool(tmp_path, rules_yaml(rule, annotations=False), tests)


def _series(name: str, labels: dict[str, str], instance: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in {**labels, "instance": instance}.items())
    return f"{name}{{{inner}}}"


def test_prod_runs_a_canary() -> None:
    docs = render_env("prod")
    spec, templates = dag(docs)
    assert "canary" in tasks(spec, templates)
    data = one(docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    assert float(data["BIGBERTHA_CANARY__SHARE"]) > 0
