"""Near duplicates: question and answer, not passages; spelling variants; exact verification."""

from __future__ import annotations

from bigbertha.models.prompts import Passage, build_messages
from bigbertha.training import dedupe


def test_spelling_variants_are_near_duplicates_and_other_questions_are_not() -> None:
    near = dedupe.NearDuplicates(0.8)

    def seen(question: str, answer: str) -> bool:
        return near.seen(dedupe.normalise(question) + " \x1f " + dedupe.normalise(answer))

    assert not seen("what color is the sky ?", "the sky is blue")
    assert seen("What colour is the sky??", "The sky is blue.")
    assert not seen("what color is the grass ?", "the grass is green")
    assert not seen("what is the capital of france?", "paris")
    assert not seen("what is the capital of spain?", "madrid")


def test_the_key_ignores_the_retrieved_passages() -> None:
    passages = [Passage("A long passage about the sky. " * 20)]
    answer = [{"role": "assistant", "content": "blue [1]"}]
    a = dedupe.key(build_messages("why is it blue?", passages), answer)
    b = dedupe.key(build_messages("is grass blue?", passages), answer)
    assert a == "why is it blue \x1f blue 1"
    assert dedupe.jaccard(dedupe.shingles(a), dedupe.shingles(b)) < 0.6
    assert dedupe.key(build_messages("why is it blue?", None), answer) == a
