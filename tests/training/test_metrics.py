"""metrics: each per-answer metric on hand-built answers whose right value is known."""

from __future__ import annotations

import math

import pytest

from bigbertha.training import metrics

PASSAGES = [
    "Rollback moves the champion alias back to the previous version in the registry.",
    "The chatbot polls the registry every 30 seconds and hot-swaps to the new champion.",
]


def test_token_f1_and_rouge_l_follow_their_definitions() -> None:
    assert metrics.token_f1("The sky is blue.", "the sky is blue") == 1.0
    assert metrics.token_f1("grass", "the sky is blue") == 0.0
    # 2 common tokens of 3 predicted (precision 2/3) and 3 referenced (recall 2/3).
    assert metrics.token_f1("sky is green", "sky is blue") == pytest.approx(2 / 3)
    # LCS of "w x y z" and "w y x z" is 3 tokens: F = 3/4.
    assert metrics.rouge_l("w x y z", "w y x z") == pytest.approx(0.75)
    assert metrics.rouge_l("", "") == 1.0
    assert metrics.rouge_l("", "x") == 0.0


def test_retrieval_hits_count_the_gold_section_and_its_subsections_only() -> None:
    gold = [{"document": "docs/rollback.md", "section": "Rollback > The model"}]
    assert metrics.is_gold("rollback.md", "Rollback > The model", gold)
    assert metrics.is_gold("rollback.md", "Rollback > The model > Steps", gold)
    assert not metrics.is_gold("rollback.md", "Rollback > The modelling", gold)
    assert not metrics.is_gold("install.md", "Rollback > The model", gold)
    assert metrics.is_gold("rollback.md", None, [{"document": "rollback.md", "section": ""}])
    assert metrics.reciprocal_rank([False, False, True, True]) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank([False, False]) == 0.0


def test_groundedness_is_the_share_of_claims_a_passage_supports() -> None:
    answer = "Rollback moves the champion alias back to the previous version [1]. Pigs can fly [2]."
    assert metrics.groundedness(answer, PASSAGES) == 0.5
    # An abstention states nothing: no claim to ground (NaN, left out of the mean).
    assert math.isnan(metrics.groundedness("The documents do not say.", PASSAGES))
    assert metrics.groundedness("The chatbot hot-swaps to the new champion.", PASSAGES) == 1.0


def test_citations_must_name_an_existing_passage_that_supports_the_sentence() -> None:
    right = "The chatbot hot-swaps to the new champion [2]."
    wrong = "The chatbot hot-swaps to the new champion [1]."
    missing = "The chatbot hot-swaps to the new champion [7]."
    assert metrics.citation_correctness(right, PASSAGES) == 1.0
    assert metrics.citation_correctness(wrong, PASSAGES) == 0.0
    assert metrics.citation_correctness(missing, PASSAGES) == 0.0
    assert metrics.citation_correctness(f"{right} {wrong}", PASSAGES) == 0.5
    assert math.isnan(metrics.citation_correctness("No citations here.", PASSAGES))


def test_abstention_is_right_only_on_unanswerable_questions() -> None:
    assert metrics.abstention("The documents do not say.", answerable=False) == 1.0
    assert metrics.abstention("The passages don't mention a GPU quota.", answerable=False) == 1.0
    assert metrics.abstention("The documents do not say.", answerable=True) == 0.0
    assert metrics.abstention("Rollback moves the alias [1].", answerable=False) == 0.0
    assert metrics.abstention("Rollback moves the alias [1].", answerable=True) == 1.0


def test_completeness_catches_cut_answers_and_copied_passage_headers() -> None:
    # The promoted model's answer from issue 21: a copied header, cut mid-sentence.
    copied = (
        "[1] (rollback.md, section Rollback > The model: ...) "
        "environ['BIGBERTHA_MLFLOW__MODEL_NAME'], 'champion', '"
    )
    assert metrics.completeness(copied) == 0.0
    # The headers prompts carry now, copied with or without their "Passage n:".
    assert metrics.completeness("Passage 1: rollback.md, section Rollback. It moves.") == 0.0
    assert metrics.completeness("1. README.md, section BigBertha > Try it. 2. x.") == 0.0
    assert metrics.completeness("Rollback moves the alias back to") == 0.0
    assert metrics.completeness("Question: what is rollback? It moves the alias.") == 0.0
    assert metrics.completeness("Rollback moves the alias back [1].") == 1.0
    assert metrics.completeness("It restores `previous`.") == 1.0


def test_cosine_and_mean_skip_what_does_not_apply() -> None:
    assert metrics.cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert metrics.cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert metrics.mean([1.0, math.nan, 0.0]) == 0.5
    assert math.isnan(metrics.mean([math.nan]))
