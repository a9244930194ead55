"""The demo's report.html: the decisions with their numbers, the timeline, and plots of the loop
and of each live canary."""

from __future__ import annotations

import base64
import html
import io
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bigbertha.local.platform import LocalPlatform
from bigbertha.local.timeline import Timeline, get_json


def write_report(platform: LocalPlatform | None, timeline: Timeline, path: Path) -> Path:
    """report.html: each round's decision and numbers, the same questions answered by the old
    and the new champion side by side, the timeline, and a plot of the loop."""
    plot = ""
    if platform is not None and getattr(platform, "prometheus", None) is not None:
        try:
            plot = _plot(platform, timeline)
        except (OSError, KeyError, ValueError) as exc:  # Prometheus gone with a failed run
            plot = f"<p>No plot: Prometheus did not answer ({html.escape(str(exc))}).</p>"
    esc = html.escape
    status = {True: "ok", False: "FAILED", None: "unfinished"}
    rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.started - timeline.t0:.1f}s</td>"
        f"<td>{((s.finished or s.started) - s.started):.1f}s</td>"
        f"<td>{status[s.ok]}</td><td>{esc(s.result)}</td></tr>"
        for s in timeline.stages
    )
    decisions = ""
    for rnd in timeline.data.get("rounds", []):
        outcome = rnd.outcome
        metric_rows = "".join(
            f"<tr><td>{esc(str(name))}</td><td>{esc(str(v.get('verdict', '')))}</td>"
            f"<td>{esc(str(v.get('champion')))}</td><td>{esc(str(v.get('challenger')))}</td>"
            f"<td>{esc(str(v.get('interval', '')).replace('..', ' .. '))}</td></tr>"
            for name, v in (outcome.get("metrics") or {}).items()
        )
        decisions += (
            f"<h3>Round {rnd.number} ({esc(rnd.kind)}, margin {rnd.margin:g}): "
            f"<b>{esc(str(outcome.get('decision', 'none')))}</b></h3>"
            f"<p>{esc(rnd.summary())}</p>"
            f"<p>Workflow {esc(rnd.workflow)}; version {esc(str(outcome.get('version')))}; "
            f"champion {esc(rnd.served_before)} &rarr; {esc(str(rnd.champion_after))}. "
            f"Why: {esc(str(outcome.get('reason', '')))}</p>"
            f"<p>Evaluation set: {esc(str(outcome.get('eval_set', '')))}; evidence: "
            f"{esc(str(outcome.get('evidence', '')))}.</p>"
            "<table><tr><th>metric</th><th>role, verdict</th><th>champion (or base)</th>"
            "<th>challenger</th><th>paired bootstrap interval of the change</th></tr>"
            f"{metric_rows}</table>{_side_by_side(rnd)}"
        )
    canary = canary_section(platform, timeline.data.get("rounds", []))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>BigBertha demo</title>
<style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}}
.answer{{white-space:pre-wrap;max-width:40em}} .sources{{color:#555;font-size:small}}</style>
</head><body><h1>BigBertha demo report</h1>
<h2>Rounds</h2>{decisions or "<p>No retraining happened.</p>"}
{canary and "<h2>Live canary</h2>" + canary}
<h2>Timeline</h2><table><tr><th>stage</th><th>at</th><th>took</th><th></th><th>result</th></tr>
{rows}</table><h2>Feedback, alert, retraining and promotion</h2>{plot}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


RATINGS = {"down": "&#128078; rated down", "up": "&#128077; rated up", None: "not rated"}


def _answer_cell(answer: dict[str, Any] | None) -> str:
    """One answer: its text, its sources (document, section, retrieval score) and its rating."""
    if answer is None:
        return "<td>(not asked)</td>"
    esc = html.escape
    sources = "".join(
        f"<li>[{s.get('n')}] {esc(str(s.get('file_name') or s.get('document')))}"
        f"{' &sect; ' + esc(str(s['section'])) if s.get('section') else ''}"
        f" (score {s.get('score')})</li>"
        for s in answer.get("sources") or []
    )
    return (
        f"<td><div class=answer>{esc(str(answer.get('answer', '')))}</div>"
        f"<ul class=sources>{sources or '<li>no sources</li>'}</ul>"
        f"<div>{RATINGS.get(answer.get('rating'), esc(str(answer.get('rating'))))}</div></td>"
    )


def _side_by_side(rnd: Any) -> str:
    """The round's questions as the old champion answered them and as the new one does."""
    if not rnd.answers_before or not rnd.answers_after:
        return ""
    after = {a.get("question"): a for a in rnd.answers_after}
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(str(before.get('question')))}</td>{_answer_cell(before)}"
        f"{_answer_cell(after.get(before.get('question')))}</tr>"
        for before in rnd.answers_before
    )
    return (
        "<h4>The same questions, before and after</h4><table><tr><th>question</th>"
        f"<th>old champion (version {esc(rnd.served_before)})</th>"
        f"<th>new champion (version {esc(str(rnd.champion_after))})</th></tr>{rows}</table>"
    )


def _plot(platform: LocalPlatform, timeline: Timeline) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prom = platform.prometheus
    start, end = timeline.t0, time.time()

    def series(query: str) -> list[tuple[float, float]]:
        q = urllib.parse.quote(query)
        url = f"{prom.url}/api/v1/query_range?query={q}&start={start}&end={end}&step=2"
        result = get_json(url)["data"]["result"]
        return [(float(t) - start, float(v)) for t, v in result[0]["values"]] if result else []

    ratio = series(
        'sum(bigbertha_feedback_total{rating="down"}) / clamp_min(sum(bigbertha_feedback_total), 1)'
    )
    alert = series('max(ALERTS{alertname="BigBerthaNegativeFeedbackHigh",alertstate="firing"})')
    fig, ax = plt.subplots(figsize=(9, 3.5))
    if ratio:
        ax.plot(*zip(*ratio, strict=True), label="negative feedback ratio")
    for i, (t, _value) in enumerate(alert):
        # ALERTS has samples only while firing: shade each sampled step.
        label = "retrain alert firing" if not i else None
        ax.axvspan(t, t + 2, color="orange", alpha=0.3, label=label)
    styles = {"retrain_started": "--", "retrain_finished": ":", "promoted": "-"}
    for rnd in timeline.data.get("rounds", []):
        for mark, at in rnd.marks.items():
            label = mark if rnd.number == 1 or mark == "promoted" else None
            ax.axvline(at - start, linestyle=styles[mark], color="gray", label=label)
    ax.set_xlabel("seconds since start")
    ax.set_ylim(-0.05, 1.1)
    ax.legend(loc="lower right", fontsize="small")
    return _img(fig, "timeline plot")


def _img(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG <img> (the report is one self-contained file)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'


# --- the live canary -----------------------------------------------------------------------


def canary_section(platform: LocalPlatform | None, rounds: list[Any]) -> str:
    """The report's canary part: each canary's decision, its numbers and its plot."""
    esc = html.escape
    parts = []
    for rnd in rounds:
        canary = (rnd.outcome or {}).get("canary")
        if not canary:
            continue
        rows = "".join(
            f"<tr><td>{side}</td><td>{esc(str(canary[side].get('up')))}</td>"
            f"<td>{esc(str(canary[side].get('down')))}</td>"
            f"<td>{_ratio(canary[side].get('ratio'))}</td></tr>"
            for side in ("champion", "challenger")
        )
        plot = ""
        if platform is not None and getattr(platform, "prometheus", None) is not None:
            plot = _canary_plot(platform, canary)
        if canary.get("statistic") and canary.get("design"):
            plot += _statistic_plot(canary)
        parts.append(
            f"<h3>Round {rnd.number}: version {esc(canary['version'])} "
            f"<b>{esc(canary['decision'])}</b> after {canary['seconds']:.0f}s</h3>"
            f"<p>Raters preferred the {esc(canary['prefer'])}. Why: {esc(canary['reason'])}</p>"
            "<table><tr><th>votes since the canary started</th><th>up</th><th>down</th>"
            f"<th>down-vote ratio</th></tr>{rows}</table>"
            f"{statistic_table(canary)}{plot}"
        )
    return "".join(parts)


def _thresholds(design: dict[str, Any]) -> tuple[float, float]:
    """The log likelihood ratios at which the canary promotes and retires (canary.Design)."""
    return (
        math.log(1 / float(design["false_promotion_rate"])),
        math.log(2 / (1 - float(design["power"]))),
    )


def statistic_table(canary: dict[str, Any]) -> str:
    """The sequential test over time: each recorded poll's votes and both log likelihood
    ratios against the thresholds they decide at, with the design's error rates and plan."""
    design, points = canary.get("design") or {}, canary.get("statistic") or []
    if not design or not points:
        return ""
    promote_at, retire_at = _thresholds(design)
    rows = "".join(
        f"<tr><td>{float(p['t']):.0f}</td><td>{int(p['challenger_votes'])}</td>"
        f"<td>{int(p['champion_votes'])}</td><td>{float(p['log_lr_promote']):.2f}</td>"
        f"<td>{float(p['log_lr_retire']):.2f}</td></tr>"
        for p in points
    )
    return (
        f"<p>Sequential test (mixture SPRT): false promotion at most "
        f"{float(design['false_promotion_rate']):g} for a challenger worse by "
        f"{float(design['margin']):g}, power {float(design['power']):g} for one better by it "
        f"within {int(design['planned_votes'])} votes a side. It promotes when the first log "
        f"likelihood ratio reaches {promote_at:.2f}, retires when the second reaches "
        f"{retire_at:.2f} or the plan is spent.</p>"
        "<table><tr><th>seconds</th><th>challenger votes</th><th>champion votes</th>"
        f"<th>log LR promote (at {promote_at:.2f})</th><th>log LR retire (at {retire_at:.2f})"
        f"</th></tr>{rows}</table>"
    )


def _statistic_plot(canary: dict[str, Any]) -> str:
    """Both log likelihood ratios over the polls, their thresholds and the decision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    promote_at, retire_at = _thresholds(canary["design"])
    points = canary["statistic"]
    t = [float(p["t"]) for p in points]
    fig, ax = plt.subplots(figsize=(9, 3.0))
    ax.plot(t, [p["log_lr_promote"] for p in points], marker=".", label="log LR: promote")
    ax.plot(t, [p["log_lr_retire"] for p in points], marker=".", label="log LR: retire")
    ax.axhline(promote_at, color="C0", linestyle="--", label="promotes at")
    ax.axhline(retire_at, color="C1", linestyle=":", label="retires at")
    ax.set_xlabel("seconds since the challenger started")
    ax.set_title(f"sequential test: {canary['decision']}", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    return _img(fig, "canary statistic")


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _canary_plot(platform: LocalPlatform, canary: dict[str, Any]) -> str:
    """Both sides' down-vote ratios since the challenger started, the decision marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = float(canary["started_at"])
    end = float(canary.get("decided_at") or time.time()) + 10
    query = urllib.parse.quote(
        'max by (model_version, rating) (bigbertha_feedback_total{job="bigbertha-exporter"})'
    )
    url = (
        f"{platform.prometheus.url}/api/v1/query_range?query={query}"
        f"&start={start - 5}&end={end}&step=1"
    )
    counts: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for series in get_json(url)["data"]["result"]:
        key = (series["metric"].get("model_version", ""), series["metric"].get("rating", ""))
        counts[key] = [(float(t), float(v)) for t, v in series["values"]]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    sides = {canary["version"]: "challenger"}
    sides.update({v: "champion" for v in canary.get("champion_versions", [])})
    for version, side in sides.items():
        points = down_ratios_since(
            counts.get((version, "down"), []), counts.get((version, "up"), []), start
        )
        if points:
            ax.step(*zip(*points, strict=True), where="post", label=f"{side} (version {version})")
    decided = float(canary.get("decided_at") or end) - start
    ax.axvline(decided, color="gray", linestyle="-", label=f"decision: {canary['decision']}")
    ax.set_xlabel("seconds since the challenger started")
    ax.set_ylabel("down-vote ratio")
    ax.set_xlim(left=0)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="upper right", fontsize="small")
    return _img(fig, "canary plot")


def down_ratios_since(
    down: list[tuple[float, float]], up: list[tuple[float, float]], start: float
) -> list[tuple[float, float]]:
    """(seconds since start, down / all votes since start) wherever a vote was counted."""
    base_down = _at(down, start)
    base_up = _at(up, start)
    points = []
    for t, value in down:
        if t < start:
            continue
        d = value - base_down
        total = d + (_at(up, t) - base_up)
        if total > 0:
            points.append((t - start, d / total))
    return points


def _at(series: list[tuple[float, float]], t: float) -> float:
    """The counter's value at `t`: its last sample at or before `t` (0 before the first)."""
    value = 0.0
    for when, v in series:
        if when > t:
            break
        value = v
    return value
