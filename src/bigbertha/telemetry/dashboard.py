"""The BigBertha Grafana dashboard, built as code with grafana-foundation-sdk.

    bigbertha dashboard --output files/dashboards/bigbertha.json

The chart ships the generated JSON (files/dashboards/) as a ConfigMap that kube-prometheus-stack's
Grafana sidecar loads (templates/dashboards/configmap.yaml), so regenerate it after editing this
module; tests/telemetry/test_dashboard.py fails while the committed file differs from `build()`.

Every query reads the exporter's metrics (bigbertha.telemetry.recorder names), Prometheus'
own ALERTS series, or the inference tier's vLLM metrics. Panels filter on the `namespace` (and
chat panels on the `model`) variables, so one Grafana can show several releases. The
negative-feedback threshold is a constant variable: the chart sets it from the alert rule's
value, so the line on the panel is the line the alert fires at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import ConfigError

if TYPE_CHECKING:
    from grafana_foundation_sdk.builders.dashboard import Dashboard

UID = "bigbertha-overview"
TITLE = "BigBertha / LLMOps overview"
#: Where the chart reads the dashboard from (relative to the chart root).
CHART_PATH = Path("files/dashboards/bigbertha.json")
#: The constant variable the chart overrides with the alert rule's threshold.
THRESHOLD_VARIABLE = "negative_feedback_threshold"
#: Default of that variable: the ratio of thumbs-down answers BigBerthaNegativeFeedbackHigh uses.
DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD = 0.3
#: The rule's window, also a constant the chart overrides, so the panel plots what the rule tests.
WINDOW_VARIABLE = "negative_feedback_window"
DEFAULT_NEGATIVE_FEEDBACK_WINDOW = "1h"

# Label selectors shared by the queries: chat series carry model and model_version, pipeline
# series only the scrape's namespace. Every exporter replica exports the same Redis totals, so
# each bigbertha_* rate is first collapsed across replicas (`max without (instance, pod)`), as
# the alert rules do, and only then summed: N replicas must not show N times the traffic.
CHAT = '{namespace=~"$namespace", model=~"$model"}'
JOB = '{namespace=~"$namespace"}'
RATE = "[$__rate_interval]"
ONCE = "max without (instance, pod)"  # one series per event, whatever the replicas


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel (kept as data so the tests can check every expression)."""

    expr: str
    legend: str
    instant: bool = False
    heatmap: bool = False
    interval: str | None = None


def _quantile(q: float, histogram: str) -> Query:
    expr = f"histogram_quantile({q}, sum by (le) ({ONCE} (rate({histogram}_bucket{CHAT}{RATE}))))"
    return Query(expr, f"p{int(q * 100)}")


def _ratio(numerator: str, denominator: str) -> str:
    # An idle window is 0/0: no point on the graph rather than a misleading zero.
    return f"sum({numerator}) / sum({denominator})"


REQUESTS = (
    Query(
        f"sum by (model_version) ({ONCE} (rate(bigbertha_chat_requests_total{CHAT}{RATE})))",
        "{{model_version}}",
    ),
    Query(
        f"sum({ONCE} (rate(bigbertha_chat_errors_total{CHAT}{RATE})))",
        "errors",
    ),
)
LATENCY = (
    _quantile(0.5, "bigbertha_chat_latency_seconds"),
    _quantile(0.95, "bigbertha_chat_latency_seconds"),
)
TTFT = (
    _quantile(0.5, "bigbertha_chat_ttft_seconds"),
    _quantile(0.95, "bigbertha_chat_ttft_seconds"),
)
TOKENS = (
    Query(
        f"sum by (kind) ({ONCE} (rate(bigbertha_chat_tokens_total{CHAT}{RATE})))",
        "{{kind}} tokens/s",
    ),
    # Generation speed: completion tokens per second spent answering.
    Query(
        _ratio(
            f'{ONCE} (rate(bigbertha_chat_tokens_total{{namespace=~"$namespace", model=~"$model", '
            f'kind="completion"}}{RATE}))',
            f"{ONCE} (rate(bigbertha_chat_latency_seconds_sum{CHAT}{RATE}))",
        ),
        "completion tokens per answer-second",
    ),
)
DOWN = '{namespace=~"$namespace", model=~"$model", rating="down"}'


def _standing(selector: str, window: str) -> str:
    """The rate of votes standing: cast minus replaced by a later vote on the same answer (the
    alert rules' count; `or ... * 0` where an older exporter has no replaced series)."""
    cast = f"{ONCE} (rate(bigbertha_feedback_total{selector}{window}))"
    replaced = f"{ONCE} (rate(bigbertha_feedback_replaced_total{selector}{window}))"
    return f"({cast} - ({replaced} or {cast} * 0))"


NEGATIVE_FEEDBACK = (
    Query(
        _ratio(
            _standing(DOWN, f"[${WINDOW_VARIABLE}]"),
            _standing(CHAT, f"[${WINDOW_VARIABLE}]"),
        ),
        "thumbs-down ratio",
    ),
    Query(f"vector(${THRESHOLD_VARIABLE})", "alert threshold"),
)
REFUSED = (
    Query(
        f"sum by (reason) ({ONCE} (rate(bigbertha_chat_refused_total{JOB}{RATE})))",
        "{{reason}}",
    ),
)
FEEDBACK = (
    Query(
        f"sum by (rating) {_standing(CHAT, RATE)}",
        "{{rating}}",
    ),
)
RETRIEVAL_SCORES = (
    Query(
        f"sum by (le) ({ONCE} (increase(bigbertha_retrieval_score_bucket{CHAT}{RATE})))",
        "{{le}}",
        heatmap=True,
    ),
)
EMPTY_RETRIEVAL = (
    Query(
        _ratio(
            f"{ONCE} (rate(bigbertha_retrieval_empty_total{CHAT}{RATE}))",
            f"{ONCE} (rate(bigbertha_chat_requests_total{CHAT}{RATE}))",
        ),
        "questions without context",
    ),
)
ALERTS = (
    Query(
        'sum by (alertname, severity) (ALERTS{alertname=~"BigBertha.+", alertstate="firing"})',
        "{{alertname}} ({{severity}})",
    ),
)
SERVING_MODEL = (
    Query(f"max by (model_version) (bigbertha_model_info{CHAT})", "{{model_version}}"),
)
RETRAIN_RUNS = (
    Query(
        f"sum by (result) ({ONCE} (increase(bigbertha_retrain_runs_total{JOB}[1h])))",
        "{{result}}",
        interval="1h",
    ),
)
TRAINING_ROWS = (
    Query(
        f"sum by (outcome) ({ONCE} (increase(bigbertha_training_rows_total{JOB}[1h])))",
        "{{outcome}}",
        interval="1h",
    ),
)
PROMOTIONS = (
    Query(
        f"sum by (decision) ({ONCE} (increase(bigbertha_promotions_total{JOB}[1h])))",
        "{{decision}}",
        interval="1h",
    ),
)
# The inference tier: vLLM's own metrics (names of vLLM 0.33.0's v1/metrics/loggers.py), scraped
# through the adapter sidecar; their model_name label is the served base name, so these panels
# filter on the namespace alone.
TIER_REQUESTS = (
    Query(f"sum(vllm:num_requests_running{JOB})", "running"),
    Query(f"sum(vllm:num_requests_waiting{JOB})", "waiting"),
)
TIER_KV_CACHE = (Query(f"max(vllm:kv_cache_usage_perc{JOB})", "fullest pod"),)
TIER_LATENCY = (
    Query(
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(vllm:time_to_first_token_seconds_bucket{JOB}{RATE})))",
        "time to first token p95",
    ),
    Query(
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(vllm:e2e_request_latency_seconds_bucket{JOB}{RATE})))",
        "request p95",
    ),
)
TIER_TOKENS = (
    Query(f"sum(rate(vllm:generation_tokens_total{JOB}{RATE}))", "generated tokens/s"),
    Query(f"sum(rate(vllm:prompt_tokens_total{JOB}{RATE}))", "prompt tokens/s"),
)
REDIS_UP = (Query(f"min(bigbertha_exporter_redis_up{JOB})", "redis", instant=True),)
DROPPED = (
    Query(
        f"sum(increase(bigbertha_telemetry_dropped_total{JOB}[$__range]))",
        "dropped",
        instant=True,
    ),
)


def build(
    negative_feedback_threshold: float = DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD,
) -> Dashboard:
    """The dashboard builder: rows of traffic, quality, retraining and telemetry health panels."""
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import heatmap, stat, statetimeline, timeseries
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataSourceRef,
        DynamicConfigValue,
        Threshold,
        ThresholdsMode,
        VariableRefresh,
        VariableSort,
    )

    datasource = DataSourceRef(type_val="prometheus", uid="${datasource}")

    def panel(builder: Any, title: str, description: str, queries: tuple[Query, ...]) -> Any:
        builder = (
            builder.title(title).description(description).datasource(datasource).height(8).span(6)
        )
        for ref, query in zip("ABCDEFGH", queries, strict=False):
            target = _target(query, ref, datasource)
            builder = builder.with_target(target)
        return builder

    def series(title: str, description: str, queries: tuple[Query, ...], unit: str) -> Any:
        return panel(timeseries.Panel(), title, description, queries).unit(unit)

    def thresholds(*steps: tuple[float | None, str]) -> Any:
        return (
            db.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=v, color=c) for v, c in steps])
        )

    def bars(title: str, description: str, queries: tuple[Query, ...]) -> Any:
        return (
            series(title, description, queries, "short")
            .draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(80)
            .stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
        )

    feedback_ratio = (
        series(
            "Negative feedback ratio",
            "Share of rated answers that got a thumbs-down over the alert rule's window. "
            "BigBerthaNegativeFeedbackHigh fires (and starts a retraining run) above the "
            "dashed threshold once enough votes came in.",
            NEGATIVE_FEEDBACK,
            "percentunit",
        )
        .min(0)
        .max(1)
        .override_by_name(
            "alert threshold",
            [
                DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
            ],
        )
    )

    builder = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Chatbot traffic, latency and quality, the retraining loop and telemetry health "
            "(generated by bigbertha.telemetry.dashboard; edit the code, not the JSON)."
        )
        .tags(["bigbertha", "llmops"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(datasource)
            .query("label_values(bigbertha_exporter_redis_up, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            db.QueryVariable("model")
            .label("Model")
            .datasource(datasource)
            .query('label_values(bigbertha_chat_requests_total{namespace=~"$namespace"}, model)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
        )
        .with_variable(
            db.ConstantVariable(THRESHOLD_VARIABLE)
            .description("Thumbs-down ratio at which BigBerthaNegativeFeedbackHigh fires")
            .value(_number(negative_feedback_threshold))
        )
        .with_variable(
            db.ConstantVariable(WINDOW_VARIABLE)
            .description("Window over which BigBerthaNegativeFeedbackHigh computes the ratio")
            .value(DEFAULT_NEGATIVE_FEEDBACK_WINDOW)
        )
        .with_row(db.Row("Traffic and latency"))
        .with_panel(
            series(
                "Request rate",
                "Answers per second by serving model version, and failed answers.",
                REQUESTS,
                "reqps",
            )
        )
        .with_panel(
            series(
                "Answer latency p50 / p95",
                "Question to complete answer (BigBerthaLatencyP95High pages on p95).",
                LATENCY,
                "s",
            )
        )
        .with_panel(
            series(
                "Time to first token p50 / p95",
                "Question to the first streamed token: what the user waits for.",
                TTFT,
                "s",
            )
        )
        .with_panel(
            bars(
                "Refused questions",
                "Questions refused before any work, per second: busy (answer queue full: add "
                "replicas or chat.max_concurrent_answers), too_large, invalid, timeout, "
                "person_limit (one person over chat.questions_per_minute or votes_per_hour), "
                "unauthenticated (an API call without a valid sign-on token).",
                REFUSED,
            )
        )
        .with_panel(
            series(
                "Tokens per second",
                "Prompt and completion token throughput, and completion tokens per second "
                "spent answering (generation speed).",
                TOKENS,
                "short",
            )
        )
        .with_row(db.Row("Answer quality"))
        .with_panel(feedback_ratio)
        .with_panel(
            series("Feedback", "Ratings per second by thumbs up and down.", FEEDBACK, "short")
        )
        .with_panel(
            panel(
                heatmap.Panel(),
                "Retrieval score distribution",
                "Similarity of the retrieved chunks (BigBerthaRetrievalRelevanceLow retrains "
                "when it drifts low).",
                RETRIEVAL_SCORES,
            )
            .calculate(False)
            .y_axis(heatmap.YAxisConfig().unit("short").decimals(1))
        )
        .with_panel(
            series(
                "Empty retrieval rate",
                "Share of questions answered with no context chunk (BigBerthaEmptyRetrievalHigh).",
                EMPTY_RETRIEVAL,
                "percentunit",
            )
            .min(0)
            .max(1)
        )
        .with_row(db.Row("Retraining and models"))
        .with_panel(
            panel(
                statetimeline.Panel(),
                "Serving model version",
                "Which registered model versions answered questions over time (champion "
                "promotions and rollbacks show up as a change of colour).",
                SERVING_MODEL,
            ).span(8)
        )
        .with_panel(
            bars(
                "Retraining runs",
                "Retraining pipeline runs per hour by result.",
                RETRAIN_RUNS,
            ).span(8)
        )
        .with_panel(
            bars(
                "Promotions",
                "Promotion gate decisions per hour (promoted, rejected, rollback).",
                PROMOTIONS,
            ).span(8)
        )
        .with_panel(
            bars(
                "Training rows",
                "Rows prepare-data read per hour: kept, or why left out (contributor_cap: a "
                "person's up-rated turns beyond finetune.max_rows_per_contributor; "
                "personal_data, near_duplicate, too_long, ...). The run's data card has each.",
                TRAINING_ROWS,
            ).span(12)
        )
        .with_panel(
            panel(
                statetimeline.Panel(),
                "Firing alerts",
                "BigBertha alerts while they fire; each links a runbook in docs/runbooks.md.",
                ALERTS,
            ).span(12)
        )
        .with_panel(
            panel(
                stat.Panel(),
                "Exporter reads Redis",
                "1 when the exporter's last scrape read the telemetry from Redis "
                "(BigBerthaRedisDown pages on 0).",
                REDIS_UP,
            )
            .span(6)
            .thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            panel(
                stat.Panel(),
                "Telemetry events dropped",
                "Events the chatbot and jobs could not write to Redis in the time range.",
                DROPPED,
            )
            .span(6)
            .thresholds(thresholds((None, "green"), (1, "orange")))
        )
        .with_row(db.Row("Inference tier"))
        .with_panel(
            series(
                "Tier requests in flight",
                "Requests vLLM is generating and requests queued for a batch slot (all tier "
                "pods). A queue that keeps growing needs more replicas or GPUs.",
                TIER_REQUESTS,
                "short",
            )
        )
        .with_panel(
            series(
                "Tier KV-cache usage",
                "Share of the KV cache in use on the fullest vLLM pod; near 1, requests queue "
                "or are preempted.",
                TIER_KV_CACHE,
                "percentunit",
            )
            .min(0)
            .max(1)
        )
        .with_panel(
            series(
                "Tier latency p95",
                "Time to first token and whole-request latency inside vLLM (the chatbot's own "
                "panels above add retrieval and streaming).",
                TIER_LATENCY,
                "s",
            )
        )
        .with_panel(
            series(
                "Tier token throughput",
                "Tokens per second vLLM generates and reads as prompts, all adapters included.",
                TIER_TOKENS,
                "short",
            )
        )
    )
    return builder


def _target(query: Query, ref: str, datasource: Any) -> Any:
    from grafana_foundation_sdk.builders import prometheus
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

    target = (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref)
        .datasource(datasource)
    )
    target = target.instant() if query.instant else target.range()
    if query.heatmap:
        target = target.format(PromQueryFormat.HEATMAP)
    if query.interval:
        target = target.interval(query.interval)
    return target


def _number(value: float) -> str:
    return format(value, "g")


def render(negative_feedback_threshold: float = DEFAULT_NEGATIVE_FEEDBACK_THRESHOLD) -> str:
    """The dashboard as the JSON text the chart ships (stable: sorted keys, trailing newline)."""
    if not 0 < negative_feedback_threshold < 1:
        raise ConfigError(
            f"negative feedback threshold {negative_feedback_threshold}: must be a ratio "
            "between 0 and 1"
        )
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
    except ImportError as exc:
        raise ConfigError(
            "grafana-foundation-sdk is not installed: it is a development dependency "
            "(`make setup` installs it)"
        ) from exc
    model = build(negative_feedback_threshold).build()
    # Stable ids in layout order (rows included), so links to a panel survive regeneration.
    for number, item in enumerate(model.panels or [], start=1):
        item.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every Prometheus target in a dashboard JSON document."""
    found = []
    for item in document.get("panels", []):
        for inner in [item, *item.get("panels", [])]:
            for target in inner.get("targets", []):
                if "expr" in target:
                    found.append((inner.get("title", ""), target["expr"]))
    return found


def write(path: Path, negative_feedback_threshold: float) -> Path:
    """Write the rendered dashboard to `path` (parents created) and return it."""
    text = render(negative_feedback_threshold)
    json.loads(text)  # a broken document must never reach the chart
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
