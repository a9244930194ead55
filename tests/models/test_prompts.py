"""The one prompt builder: passages numbered and labelled, the no-context form, bad passages."""

from __future__ import annotations

import pytest

from bigbertha.models.prompts import (
    NO_CONTEXT_PROMPT,
    SYSTEM_PROMPT,
    Passage,
    body,
    build_messages,
)


def test_passages_are_numbered_labelled_and_followed_by_the_question() -> None:
    system, user = build_messages(
        "How long do refunds take?",
        [Passage("Refunds take 5 days.\n", "a.pdf, page 3"), Passage("  Gloria.", None)],
    )
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user == {
        "role": "user",
        "content": "Context passages:\n\nPassage 1: a.pdf, page 3\nRefunds take 5 days.\n\n"
        "Passage 2\nGloria.\n\nQuestion: How long do refunds take?\nAnswer with citations:",
    }
    # Nothing in a passage's header reads like the [n] citation the answer should write.
    assert "[1]" not in user["content"] and "[2]" not in user["content"]


def test_a_passage_loses_the_headings_it_opens_with_not_those_inside() -> None:
    # A chunk opens with its section's headings, which its label already names: a small model
    # copied them into its answers instead of answering.
    text = "# Rollback\n\n## The model\n\nMove the alias back.\n\n## The release\nhelm rollback"
    (_, user) = build_messages("How?", [Passage(text, "rollback.md, section Rollback > The model")])
    assert (
        "Passage 1: rollback.md, section Rollback > The model\nMove the alias back.\n\n"
        in (user["content"])
    )
    assert "# Rollback" not in user["content"]
    assert "## The release\nhelm rollback" in user["content"]
    assert body("# Only a heading") == "# Only a heading"  # nothing else to show


def test_without_retrieval_the_model_is_told_the_answer_is_not_from_the_documents() -> None:
    assert build_messages("q?", None) == [
        {"role": "system", "content": NO_CONTEXT_PROMPT},
        {"role": "user", "content": "q?"},
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", Passage("plain text")),
        ({"text": "t", "label": "doc.md"}, Passage("t", "doc.md")),
        ({"text": "t", "label": ""}, Passage("t")),
    ],
)
def test_passages_round_trip_through_their_records(value: object, expected: Passage) -> None:
    assert Passage.from_record(value) == expected
    assert Passage.from_record(expected.to_record()) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (3, "string or an object"),
        ({"text": " "}, "non-empty"),
        ({"text": "t", "label": 1}, "label"),
    ],
)
def test_a_bad_passage_says_why(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Passage.from_record(value)
