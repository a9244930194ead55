"""The demo's report.html: the decisions with their numbers, the timeline and a plot."""

from __future__ import annotations

import base64
import html
import io
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bigbertha.local.platform import LocalPlatform
from bigbertha.local.timeline import Timeline, get_json


def write_report(platform: LocalPlatform | None, timeline: Timeline, path: Path) -> Path:
    """report.html: the decisions and their numbers, the timeline, and a plot of the loop."""
    plot = ""
    if platform is not None and getattr(platform, "prometheus", None) is not None:
        plot = _plot(platform, timeline)
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.started - timeline.t0:.1f}s</td>"
        f"<td>{((s.finished or s.started) - s.started):.1f}s</td>"
        f"<td>{'ok' if s.ok else 'FAILED'}</td><td>{esc(s.result)}</td></tr>"
        for s in timeline.stages
    )
    decisions = ""
    for rnd in timeline.data.get("rounds", []):
        outcome = rnd.outcome
        metric_rows = "".join(
            f"<tr><td>{esc(str(name))}</td><td>{esc(str(v.get('champion')))}</td>"
            f"<td>{esc(str(v.get('challenger')))}</td></tr>"
            for name, v in (outcome.get("metrics") or {}).items()
        )
        decisions += (
            f"<h3>Round {rnd.number} (margin {rnd.margin:g}): "
            f"<b>{esc(str(outcome.get('decision', 'none')))}</b></h3>"
            f"<p>Workflow {esc(rnd.workflow)}; version {esc(str(outcome.get('version')))}; "
            f"champion {esc(rnd.served_before)} &rarr; {esc(str(rnd.champion_after))}. "
            f"Why: {esc(str(outcome.get('reason', '')))}</p>"
            "<table><tr><th>gate metric</th><th>champion (or base)</th><th>challenger</th></tr>"
            f"{metric_rows}</table>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>BigBertha demo</title>
<style>body{{font-family:sans-serif;margin:2em}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>BigBertha demo report</h1>
<h2>Promotion decisions</h2>{decisions or "<p>No retraining happened.</p>"}
<h2>Timeline</h2><table><tr><th>stage</th><th>at</th><th>took</th><th></th><th>result</th></tr>
{rows}</table><h2>Feedback, alert, retraining and promotion</h2>{plot}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


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
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="timeline plot" src="data:image/png;base64,{encoded}">'
