"""The chart's alert rules and Alertmanager route, proven with promtool and amtool.

Render the chart, extract the PrometheusRule groups, generate promtool unit tests from the
thresholds in the values (a series just past a threshold fires after `for`, one just short does
not, the minimum-sample guard holds, the alert resolves), and run `promtool test rules`. The
AlertmanagerConfig is turned into the alertmanager.yml the operator would generate
(bigbertha.local.alerting) and checked with `amtool check-config` and `amtool config routes test`.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigbertha.local.alerting import alertmanager_yaml
from bigbertha.telemetry.recorder import LATENCY_BUCKETS, bound_label
from tests.chart.promtool import rules_yaml, run_promtool
from tests.chart.render import (
    ENVS,
    NAMESPACE,
    RELEASE,
    ROOT,
    deep_merge,
    env_values,
    one,
    ours,
    render,
    render_env,
)
from tests.services import require_binary

JOB = f"{RELEASE}-exporter"  # the ServiceMonitor's job: the exporter Service's name
CHAT = {"job": JOB, "namespace": NAMESPACE, "model": "bigbertha-llm", "model_version": "3"}
ALERTS = {
    "BigBerthaNegativeFeedbackHigh": ("negativeFeedback", "retrain"),
    "BigBerthaRetrievalRelevanceLow": ("retrievalRelevance", "retrain"),
    "BigBerthaEmptyRetrievalHigh": ("emptyRetrieval", "page"),
    "BigBerthaLatencyP95High": ("latencyP95", "page"),
    "BigBerthaErrorRateHigh": ("errorRate", "page"),
    "BigBerthaExporterDown": ("exporterDown", "page"),
    "BigBerthaRedisDown": ("redisDown", "page"),
}
RATIO_ALERTS = [a for a, (key, _) in ALERTS.items() if key not in ("exporterDown", "redisDown")]


# -- extraction ---------------------------------------------------------------------------------


def monitoring_objects(values: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(PrometheusRule, AlertmanagerConfig) of one render."""
    docs = render(values or {})
    return (
        one(docs, "PrometheusRule", f"{RELEASE}-alerts"),
        one(docs, "AlertmanagerConfig", f"{RELEASE}-retrain"),
    )


# -- promtool test generation -------------------------------------------------------------------


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def series(name: str, labels: dict[str, str], rate: float, minutes: int, stop: int | None = None):
    """A counter rising by `rate` per minute for `minutes` samples (flat after `stop`)."""
    text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    if stop is None:
        values = f"0+{rate!r}x{minutes}"
    else:
        values = f"0+{rate!r}x{stop} {rate * stop!r}+0x{minutes - stop}"
    return {"series": name + text, "values": values}


def quantile(bounds: tuple[float, ...], cumulative: list[float], q: float) -> float:
    """histogram_quantile as Prometheus computes it (linear within the bucket)."""
    rank = q * cumulative[-1]
    for i, (bound, count) in enumerate(zip(bounds, cumulative, strict=True)):
        if count >= rank:
            if bound == math.inf:
                return bounds[i - 1]
            lower, below = (bounds[i - 1], cumulative[i - 1]) if i else (0.0, 0.0)
            return lower + (bound - lower) * (rank - below) / (count - below)
    raise AssertionError("unreachable")


def latency_fractions(target: float) -> list[float]:
    """Cumulative bucket fractions whose p95 is `target` (two buckets used)."""
    bounds = LATENCY_BUCKETS
    hi = next(i for i, b in enumerate(bounds) if b >= target)
    assert bounds[hi] != math.inf, f"p95 {target}s is past the largest latency bucket"
    lower = bounds[hi - 1] if hi else 0.0
    frac = (target - lower) / (bounds[hi] - lower)
    f_lo = min(max((0.95 - frac) / (1 - frac), 0.0), 0.94) if frac < 1 else 0.0
    return [0.0 if i < hi - 1 else f_lo if i == hi - 1 else 1.0 for i in range(len(bounds))]


def ratio_inputs(
    alert: str,
    cfg: dict[str, Any],
    bad: bool,
    volume: float,
    minutes: int,
    stop: int | None = None,
    serving: bool = True,
    voters: int | None = None,
) -> list[dict[str, str]]:
    """Input series for one ratio alert at `volume` events per minute, just past or short.

    `serving`: the exporter reports the model version as serving (bigbertha_model_info 1);
    `voters`: distinct people who voted down (default: the rule's minVoters).
    """
    threshold = float(cfg["threshold"])
    delta = max(abs(threshold) * 0.02, 0.002)
    low = alert == "BigBerthaRetrievalRelevanceLow"  # fires BELOW its threshold
    value = threshold + (delta if bad != low else -delta)
    args = {"minutes": minutes, "stop": stop}
    info = "bigbertha_model_info{" + ",".join(f'{k}="{v}"' for k, v in CHAT.items()) + "}"
    serving = [{"series": info, "values": f"1x{minutes}"}] if serving else []
    if alert == "BigBerthaNegativeFeedbackHigh":
        people = cfg["minVoters"] if voters is None else voters
        labels = ",".join(f'{k}="{v}"' for k, v in {**CHAT, "rating": "down"}.items())
        return [
            *serving,
            {"series": f"bigbertha_feedback_voters{{{labels}}}", "values": f"{people}x{minutes}"},
            series("bigbertha_feedback_total", {**CHAT, "rating": "down"}, volume * value, **args),
            series(
                "bigbertha_feedback_total", {**CHAT, "rating": "up"}, volume * (1 - value), **args
            ),
        ]
    if alert == "BigBerthaRetrievalRelevanceLow":
        return [
            *serving,
            series("bigbertha_retrieval_score_count", CHAT, volume, **args),
            series("bigbertha_retrieval_score_sum", CHAT, volume * value, **args),
        ]
    if alert in ("BigBerthaEmptyRetrievalHigh", "BigBerthaErrorRateHigh"):
        part = {
            "BigBerthaEmptyRetrievalHigh": "bigbertha_retrieval_empty_total",
            "BigBerthaErrorRateHigh": "bigbertha_chat_errors_total",
        }[alert]
        return [
            series("bigbertha_chat_requests_total", CHAT, volume, **args),
            series(part, CHAT, volume * value, **args),
        ]
    assert alert == "BigBerthaLatencyP95High"
    target = threshold * (1.02 if bad else 0.98)
    fractions = latency_fractions(target)
    p95 = quantile(LATENCY_BUCKETS, fractions, 0.95)
    assert (p95 > threshold) == bad, f"p95 {p95} for threshold {threshold}"
    out = [series("bigbertha_chat_latency_seconds_count", CHAT, volume, **args)]
    for bound, fraction in zip(LATENCY_BUCKETS, fractions, strict=True):
        labels = {**CHAT, "le": bound_label(bound)}
        out.append(
            series("bigbertha_chat_latency_seconds_bucket", labels, volume * fraction, **args)
        )
    return out


def alert_labels(alert: str, cfg: dict[str, Any], **series_labels: str) -> dict[str, str]:
    return {
        **series_labels,
        "severity": cfg["severity"],
        "bigbertha_action": ALERTS[alert][1],
        "bigbertha_release": RELEASE,
    }


def guard_key(cfg: dict[str, Any]) -> str:
    return next(k for k in ("minVotes", "minSamples", "minRequests") if k in cfg)


def ratio_tests(alert: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Past the threshold fires after `for`; short of it, or under the guard, never; resolves."""
    f, w = seconds(cfg["for"]), seconds(cfg["window"])
    minimum = float(cfg[guard_key(cfg)])
    busy = minimum * 1.5  # per minute: the guard holds from the second sample on
    quiet = minimum / (2 * w / 60)  # a full window holds half the minimum
    long = math.ceil((w + f) / 60) + 10
    firing = [
        {
            "exp_labels": alert_labels(
                alert, cfg, **{k: CHAT[k] for k in ("namespace", "model", "model_version")}
            )
        }
    ]
    stop = math.ceil((f + 180) / 60)

    def case(name: str, inputs: list[dict[str, str]], checks: list[tuple[float, list]]) -> dict:
        return {
            "name": f"{alert}: {name}",
            "interval": "1m",
            "input_series": inputs,
            "alert_rule_test": [
                {"eval_time": f"{int(t)}s", "alertname": alert, "exp_alerts": exp}
                for t, exp in checks
            ],
        }

    tests = [
        case(
            "just past the threshold fires after `for`",
            ratio_inputs(alert, cfg, True, busy, long),
            [(f, []), (f + 120, firing), (w + f + 300, firing)],
        ),
        case(
            "just short of the threshold never fires",
            ratio_inputs(alert, cfg, False, busy, long),
            [(f + 120, []), (w + f + 300, [])],
        ),
        case(
            f"fewer than {guard_key(cfg)} never fires",
            ratio_inputs(alert, cfg, True, quiet, long),
            [(f + 120, []), (w + f + 300, [])],
        ),
        case(
            "resolves once the window is quiet",
            ratio_inputs(alert, cfg, True, busy, long + stop, stop=stop),
            [(f + 120, firing), (stop * 60 + w + 120, [])],
        ),
    ]
    if alert == "BigBerthaNegativeFeedbackHigh":
        tests.append(
            case(
                "fewer than minVoters people never fires, however many votes they cast",
                ratio_inputs(alert, cfg, True, busy, long, voters=cfg["minVoters"] - 1),
                [(f + 120, []), (w + f + 300, [])],
            )
        )
    if ALERTS[alert][1] == "retrain":
        tests.append(
            case(
                "a version no longer serving does not retrain",
                ratio_inputs(alert, cfg, True, busy, long, serving=False),
                [(f + 120, []), (w + f + 300, [])],
            )
        )
    return tests


def down_tests(alert: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Down for longer than `for` fires, a shorter outage does not, recovery resolves."""
    f = seconds(cfg["for"])
    fm = math.ceil(f / 60)
    name = "up" if alert == "BigBerthaExporterDown" else "bigbertha_exporter_redis_up"
    target = {"job": JOB, "namespace": NAMESPACE, "instance": "10.0.0.7:8080"}
    text = "{" + ",".join(f'{k}="{v}"' for k, v in target.items()) + "}"
    labels = target if alert == "BigBerthaExporterDown" else {"job": JOB, "namespace": NAMESPACE}
    firing = [{"exp_labels": alert_labels(alert, cfg, **labels)}]
    tests = [
        {
            "name": f"{alert}: down past `for` fires, recovery resolves",
            "interval": "1m",
            "input_series": [{"series": name + text, "values": f"1x10 0x{fm + 5} 1x20"}],
            "alert_rule_test": [
                {"eval_time": f"{int(660 + f - 60)}s", "alertname": alert, "exp_alerts": []},
                {"eval_time": f"{int(660 + f + 60)}s", "alertname": alert, "exp_alerts": firing},
                {"eval_time": f"{(17 + fm) * 60 + 120}s", "alertname": alert, "exp_alerts": []},
            ],
        },
        {
            "name": f"{alert}: an outage shorter than `for` never fires",
            "interval": "1m",
            "input_series": [
                {"series": name + text, "values": f"1x10 0x{max(fm - 2, 0)} 1x{fm + 20}"}
            ],
            "alert_rule_test": [
                {"eval_time": f"{m * 60}s", "alertname": alert, "exp_alerts": []}
                for m in range(10, 10 + 2 * fm + 5, max(fm // 2, 1))
            ],
        },
    ]
    if alert == "BigBerthaExporterDown":
        absent = {"job": JOB, "namespace": NAMESPACE}
        tests.append(
            {
                "name": f"{alert}: no target at all fires too",
                "interval": "1m",
                "input_series": [{"series": 'up{job="other",namespace="x"}', "values": "1x30"}],
                "alert_rule_test": [
                    {
                        "eval_time": f"{int(f + 120)}s",
                        "alertname": alert,
                        "exp_alerts": [{"exp_labels": alert_labels(alert, cfg, **absent)}],
                    }
                ],
            }
        )
    return tests


def promtool_tests(values: dict[str, Any]) -> list[dict[str, Any]]:
    rules = values["monitoring"]["rules"]
    tests = []
    for alert, (key, _) in ALERTS.items():
        cfg = rules[key]
        tests += ratio_tests(alert, cfg) if alert in RATIO_ALERTS else down_tests(alert, cfg)
    return tests


# -- tests --------------------------------------------------------------------------------------

DEFAULTS = yaml.safe_load((ROOT / "values.yaml").read_text())


@pytest.fixture(scope="module")
def default_objects() -> tuple[dict, dict]:
    return monitoring_objects()


def test_rendered_rules_pass_promtool_check(default_objects, tmp_path: Path):
    promtool = require_binary("promtool")
    rule, _ = default_objects
    (tmp_path / "rules.yaml").write_text(rules_yaml(rule))
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_is_labelled_described_and_has_a_runbook(default_objects):
    rule, _ = default_objects
    assert rule["metadata"]["labels"]["release"] == RELEASE  # kube-prometheus-stack's selector
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rendered) == set(ALERTS)
    anchors = {
        h.strip().lower()
        for h in re.findall(r"^## (.+)$", (ROOT / "docs" / "runbooks.md").read_text(), re.M)
    }
    for alert, item in rendered.items():
        assert item["labels"]["bigbertha_action"] == ALERTS[alert][1]
        assert (
            item["labels"]["severity"]
            == DEFAULTS["monitoring"]["rules"][ALERTS[alert][0]]["severity"]
        )
        if alert in RATIO_ALERTS:
            assert "$value" in item["annotations"]["summary"], alert
            assert "$value" in item["annotations"]["description"], alert
        url, anchor = item["annotations"]["runbook_url"].split("#")
        assert url == DEFAULTS["monitoring"]["runbookUrl"]
        assert anchor == alert.lower() and anchor in anchors, f"docs/runbooks.md lacks ## {alert}"
        assert f'job="{JOB}",namespace="{NAMESPACE}"' in item["expr"]


@pytest.mark.parametrize("env", ENVS)
def test_rules_of_every_environment_behave(env: str, tmp_path: Path):
    """The thresholds each environment ships with (defaults + values/<env>.yaml) hold."""
    rule = one(render_env(env), "PrometheusRule", f"{RELEASE}-alerts")
    values = deep_merge(DEFAULTS, env_values(env))
    out = run_promtool(tmp_path, rules_yaml(rule, annotations=False), promtool_tests(values))
    assert "SUCCESS" in out


def test_a_threshold_edited_in_a_values_file_changes_the_outcome(tmp_path: Path):
    values_file = tmp_path / "strict.yaml"
    values_file.write_text("monitoring:\n  rules:\n    negativeFeedback:\n      threshold: 0.6\n")
    edited = yaml.safe_load(values_file.read_text())
    rule, _ = monitoring_objects(edited)
    cfg = DEFAULTS["monitoring"]["rules"]["negativeFeedback"]
    # 30.6% down votes: past the default 0.3, short of the edited 0.6.
    past_default = ratio_tests("BigBerthaNegativeFeedbackHigh", cfg)[0]
    assert past_default["alert_rule_test"][1]["exp_alerts"], "fires under the defaults"
    for check in past_default["alert_rule_test"]:
        check["exp_alerts"] = []
    run_promtool(tmp_path, rules_yaml(rule, annotations=False), [past_default])
    # And the edited threshold is the one that now decides.
    edited_cfg = {**cfg, "threshold": 0.6}
    run_promtool(
        tmp_path,
        rules_yaml(rule, annotations=False),
        ratio_tests("BigBerthaNegativeFeedbackHigh", edited_cfg)[:2],
    )


def test_disabled_parts_are_not_rendered():
    docs = render(
        {
            "monitoring": {
                "rules": {"redisDown": {"enabled": False}},
                "alertmanagerConfig": {"enabled": False},
            }
        }
    )
    rule = one(docs, "PrometheusRule", f"{RELEASE}-alerts")
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == set(ALERTS) - {"BigBerthaRedisDown"}
    assert not [d for d in docs if d["kind"] == "AlertmanagerConfig"]
    off = ours(render({"monitoring": {"enabled": False}}))
    assert not [d for d in off if d["kind"] in ("PrometheusRule", "AlertmanagerConfig")]


def test_alertmanager_config_sends_only_retrain_alerts_with_the_token(default_objects):
    _, amc = default_objects
    route = amc["spec"]["route"]
    assert {(m["name"], m["matchType"], m["value"]) for m in route["matchers"]} == {
        ("bigbertha_action", "=", "retrain"),
        ("bigbertha_release", "=", RELEASE),
        ("namespace", "=", NAMESPACE),
    }
    defaults = DEFAULTS["monitoring"]["alertmanagerConfig"]
    assert route["groupWait"] == defaults["groupWait"]
    assert route["groupInterval"] == defaults["groupInterval"]
    assert route["repeatInterval"] == defaults["repeatInterval"]
    (receiver,) = amc["spec"]["receivers"]
    (hook,) = receiver["webhookConfigs"]
    assert hook["sendResolved"] is False
    assert hook["url"] == f"http://{RELEASE}-alerts-eventsource-svc.{NAMESPACE}.svc:12000/alerts"
    assert hook["httpConfig"]["authorization"]["credentials"] == {
        "name": f"{RELEASE}-events-webhook",
        "key": "token",
    }
    # The same Secret the webhook EventSource checks the token against.
    docs = render({})
    secret = one(docs, "Secret", f"{RELEASE}-events-webhook")
    assert "token" in secret.get("data", secret.get("stringData", {}))


def test_intervals_and_secret_follow_the_values():
    _, amc = monitoring_objects(
        {
            "monitoring": {"alertmanagerConfig": {"groupWait": "5s", "repeatInterval": "12h"}},
            "events": {"webhook": {"auth": {"existingSecret": "my-webhook-token"}}},
        }
    )
    assert amc["spec"]["route"]["groupWait"] == "5s"
    assert amc["spec"]["route"]["repeatInterval"] == "12h"
    hook = amc["spec"]["receivers"][0]["webhookConfigs"][0]
    assert hook["httpConfig"]["authorization"]["credentials"]["name"] == "my-webhook-token"


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "BigBerthaNegativeFeedbackHigh", "bigbertha_action": "retrain"}, "retrain"),
        ({"alertname": "BigBerthaLatencyP95High", "bigbertha_action": "page"}, "null"),
        # Another release's, or another namespace's, retrain alert is not ours to act on.
        ({"alertname": "X", "bigbertha_action": "retrain", "bigbertha_release": "other"}, "null"),
        ({"alertname": "X", "bigbertha_action": "retrain", "namespace": "tenant-b"}, "null"),
        ({"alertname": "X", "bigbertha_action": "retrain-later"}, "null"),
    ],
)
def test_amtool_routes_only_this_releases_retrain_alerts(
    default_objects, tmp_path: Path, labels: dict[str, str], receiver: str
):
    amtool = require_binary("amtool")
    _, amc = default_objects
    config = tmp_path / "alertmanager.yml"
    config.write_text(alertmanager_yaml(amc, namespace=NAMESPACE, token="t0ken"))
    check = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    full = {"namespace": NAMESPACE, "bigbertha_release": RELEASE, "severity": "warning", **labels}
    routed = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            *(f"{k}={v}" for k, v in full.items()),
        ],
        capture_output=True,
        text=True,
    )
    expected = f"{NAMESPACE}/{RELEASE}-retrain/retrain-webhook" if receiver == "retrain" else "null"
    assert routed.stdout.strip() == expected, routed.stdout + routed.stderr


@pytest.mark.parametrize("replicas", [1, 2])
def test_every_vote_counts_once_whatever_the_exporter_replicas(
    default_objects, replicas: int, tmp_path: Path
):
    """Prod runs two exporters over one Redis: each exports the same totals. 12 real votes at
    50% down stay under minVotes 20 with 1 or 2 replicas (summed, 2 replicas made it 24 and
    fired); 24 real votes fire with either; a changed vote counts once."""
    rule, _ = default_objects
    cfg = DEFAULTS["monitoring"]["rules"]["negativeFeedback"]
    assert cfg["minVotes"] == 20 and cfg["threshold"] < 0.5

    def inputs(votes_per_rating: int, replaced_up: int = 0) -> list[dict[str, str]]:
        out = []
        for n in range(replicas):
            target = {**CHAT, "instance": f"10.0.0.{n + 7}:8080", "pod": f"exporter-{n}"}
            counters = [("bigbertha_feedback_total", r, votes_per_rating) for r in ("up", "down")]
            counters.append(("bigbertha_feedback_replaced_total", "up", replaced_up))
            for name, rating, total in counters:
                # One a minute until the total, then flat: the same on every replica.
                ramp = f"0+1x{total} {total}+0x60" if total else "0+0x80"
                labels = {**target, "rating": rating}
                out.append(series(name, labels, 1, 0) | {"values": ramp})
            out.append(series("bigbertha_model_info", target, 0, 0) | {"values": "1+0x80"})
            people = {**target, "rating": "down"}
            voters = series("bigbertha_feedback_voters", people, 0, 0)
            out.append(voters | {"values": f"{cfg['minVoters']}+0x80"})
        return out

    alert = "BigBerthaNegativeFeedbackHigh"
    firing = [
        {
            "exp_labels": alert_labels(
                alert, cfg, **{k: CHAT[k] for k in ("namespace", "model", "model_version")}
            )
        }
    ]
    # (votes cast a rating, up votes a later down vote replaced, expected): 12 answers each
    # rated up then down are 12 votes standing, all down, but under minVotes.
    cases = ((6, 0, []), (12, 0, firing), (12, 12, []))
    tests = [
        {
            "name": f"{votes * 2} votes cast, {replaced} replaced, {replicas} replica(s)",
            "interval": "1m",
            "input_series": inputs(votes, replaced),
            "alert_rule_test": [{"eval_time": "45m", "alertname": alert, "exp_alerts": expected}],
        }
        for votes, replaced, expected in cases
    ]
    run_promtool(tmp_path, rules_yaml(rule, annotations=False), tests)
