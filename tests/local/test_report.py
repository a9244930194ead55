"""report.html: the rounds, the same questions answered before and after, the timeline."""

from __future__ import annotations

from bigbertha.local.report import write_report
from bigbertha.local.scenario import Round
from bigbertha.local.timeline import Timeline


def _answer(question: str, text: str, version: str, rating: str | None) -> dict:
    source = {"n": 1, "document": "s3://documents/seed/rollback.md", "file_name": "rollback.md"}
    source |= {"section": "Rollback", "score": 0.53}
    return {
        "question": question,
        "answer": text,
        "sources": [source],
        "model_version": version,
        "rating": rating,
    }


def test_old_and_new_champion_answers_side_by_side(tmp_path):
    timeline = Timeline()
    with timeline.stage("round 1: promotion gate") as st:
        st.result = "promoted"
    open_stage = timeline.begin("start chatbot")  # a stage a failure left unfinished
    assert open_stage.ok is None
    questions = ["How do I roll back?", "What does <the alert> mean?"]
    rnd = Round(
        1,
        0.0,
        served_before="smollm2",
        champion_after="1",
        outcome={"decision": "promoted", "version": "1", "reason": "better"},
        answers_before=[_answer(q, f"old {i}", "smollm2", "down") for i, q in enumerate(questions)],
        answers_after=[_answer(q, f"new {i}", "1", None) for i, q in enumerate(questions)],
    )
    timeline.data["rounds"] = [rnd]
    page = write_report(None, timeline, tmp_path / "out" / "report.html").read_text()
    assert "old champion (version smollm2)" in page and "new champion (version 1)" in page
    rows = page.split("<tr>")
    row = next(r for r in rows if "How do I roll back?" in r)
    assert row.index("old 0") < row.index("new 0")  # the same question, one row
    assert row.count("rollback.md &sect; Rollback (score 0.53)") == 2
    assert "rated down" in row and "not rated" in row
    assert "What does &lt;the alert&gt; mean?" in page  # escaped
    assert "unfinished" in page
    assert rnd.summary() in page


def test_a_round_without_answers_after_has_no_comparison(tmp_path):
    timeline = Timeline()
    timeline.data["rounds"] = [Round(1, 0.0, served_before="smollm2", champion_after="smollm2")]
    page = write_report(None, timeline, tmp_path / "report.html").read_text()
    assert "before and after" not in page
