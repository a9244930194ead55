"""evalset: the evaluation set of record is validated row by row, hashed and versioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core.errors import ConfigError
from bigbertha.core.settings import Settings
from bigbertha.training import data as training_data
from bigbertha.training import evalset

GOOD = {
    "id": "r1",
    "question": "How do I roll back the model?",
    "reference": "Move the champion alias back to previous [1].",
    "gold": [{"document": "docs/rollback.md", "section": "Rollback > The model"}],
    "answerable": True,
    "kind": "plain",
}
NONE = {
    "id": "u1",
    "question": "What is the GPU quota of the finance team?",
    "reference": evalset.ABSTENTION,
    "gold": [],
    "answerable": False,
    "kind": "unanswerable",
}


def jsonl(path: Path, *rows: Any) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_shipped_golden_set_is_valid_and_covers_what_the_issue_asks() -> None:
    items, rejected = evalset.parse(evalset.shipped_golden(), "golden")
    assert rejected == []
    kinds = [item.kind for item in items]
    assert len(items) >= 40 and kinds.count("unanswerable") >= 5 and "keyword" in kinds
    assert all(item.gold for item in items if item.answerable)


def test_bad_rows_are_named_with_their_reason_and_the_rest_kept(tmp_path: Path) -> None:
    uri = jsonl(
        tmp_path / "golden.jsonl",
        GOOD,
        "{not json",
        {**GOOD, "id": "r2", "answerable": "yes"},
        {**GOOD, "id": "r3", "gold": []},
        {**NONE, "id": "u2", "gold": GOOD["gold"]},
        {**GOOD, "id": "r4", "kind": "trivia"},
        GOOD,
        NONE,
    )
    items, rejected = evalset.parse(Path(uri).read_bytes(), uri)
    assert [item.id for item in items] == ["r1", "u1"]
    assert rejected == [
        f"{uri}:2: not JSON (Expecting property name enclosed in double quotes)",
        f"{uri}:3: 'answerable' must be true or false",
        f"{uri}:4: an answerable golden question needs its gold sections",
        f"{uri}:5: an unanswerable question has no gold sections",
        f"{uri}:6: 'kind' must be one of plain, keyword, paraphrase, unanswerable, feedback "
        "(got 'trivia')",
        f"{uri}:7: id 'r1' repeats an earlier row",
    ]


def test_golden_then_held_out_turns_with_one_hash_that_follows_the_rows(tmp_path: Path) -> None:
    golden = jsonl(tmp_path / "golden.jsonl", GOOD, NONE)
    turn = {**GOOD, "id": "c9-t1", "gold": [], "kind": "feedback", "conversation": "c9"}
    held_out = jsonl(tmp_path / "eval.jsonl", turn, {**turn, "id": "r1"})
    settings = Settings(evaluate={"golden": golden})
    both = evalset.load(settings, held_out)
    assert [i.id for i in both.items] == ["r1", "u1", "c9-t1"]
    assert any("id 'r1' is already in an earlier file" in line for line in both.rejected)
    assert both.name == f"{golden} + {held_out}"
    assert both.hash == training_data.dataset_hash(i.record() for i in both.items)
    alone = evalset.load(settings)
    assert alone.hash != both.hash and len(alone.hash) == 64
    jsonl(tmp_path / "golden.jsonl", {**GOOD, "reference": "Something else."}, NONE)
    assert evalset.load(settings).hash != alone.hash  # a changed reference is a new version


def test_no_set_or_no_usable_row_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no evaluation set: set evaluate.golden"):
        evalset.load(Settings())
    bad = jsonl(tmp_path / "bad.jsonl", {})
    with pytest.raises(training_data.DatasetTooSmall, match="no usable examples"):
        evalset.load(Settings(evaluate={"golden": bad}))


def test_training_format_rows_keep_their_prompt_and_are_marked_handed_in(tmp_path: Path) -> None:
    uri = jsonl(tmp_path / "old.jsonl", {"prompt": "what color is the sky ?", "completion": "blue"})
    (item,) = evalset.load(Settings(evaluate={"data": uri})).items
    assert item.kind == "handed-in" and item.question is None and item.prompt is not None
