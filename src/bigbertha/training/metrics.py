"""Per-answer metrics of the promotion gate: answer quality, retrieval and faithfulness.

Every function scores ONE example and returns a float in [0, 1], or NaN where the metric does
not apply (hit@k of an unanswerable question, citation correctness of an answer that cites
nothing); `bigbertha.training.evaluate` averages them over the examples where they apply and
keeps the per-example values so the gate can pair them (`bigbertha.training.gate`).

- ``token_f1``, ``rouge_l``: the answer against the reference (SQuAD normalisation);
- ``hit_at_k``, ``mrr``: whether the retrieved chunks include a gold section, and 1/rank of the
  first that does (answerable golden rows only);
- ``groundedness``: share of the answer's claim sentences supported by a retrieved passage;
- ``citation_correctness``: share of ``[n]`` citations naming an existing passage that supports
  the sentence they end;
- ``answer_relevancy``: cosine of the question's and the answer's embeddings (the embedding model
  retrieval uses), computed in `evaluate`;
- ``abstention``: 1 when the answer abstains exactly when it should (unanswerable questions);
- ``completeness``: 1 when the answer ends a sentence and copies no prompt scaffolding (passage
  headers like ``Passage 1: rollback.md, section ...``, "Question:").

Support (groundedness, citations) is the deterministic measure `supports` unless an NLI
cross-encoder is configured (``evaluate.nli_model``), in which case `NliSupport` decides.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bigbertha.core.words import content_words, normalize

NAN = math.nan
_CITATION = re.compile(r"\[(\d+)\]")
# Sentence ends: . ! ? followed by space (citations after the full stop stay with the sentence).
_SENTENCE_END = re.compile(r"(?<=[.!?])(?:\s*(?:\[\d+\])+)?\s+")
# What the prompt builder puts around passages (bigbertha.models.prompts.build_messages).
_SCAFFOLDING = re.compile(
    r"\[\d+\]\s*\([^)]*(section|page)[^)]*\)?|\bPassage \d+:|\b[\w.-]+\.[a-z]{2,4}, (section|page) "
    r"|Context passages:|\bQuestion:|Answer with citations:",
    re.IGNORECASE,
)
_ABSTAINS = re.compile(
    r"\b(do(es)?\s*n[o']t\s+(say|mention|contain|cover|answer)|not\s+(in|covered\s+by)\s+the\s+"
    r"(documents|passages|context)|no\s+information|cannot\s+find|can't\s+find|"
    r"(documents|passages|context)\s+(do|does)\s+not)",
    re.IGNORECASE,
)
#: A sentence is supported by a passage holding at least this share of its content words.
SUPPORT_THRESHOLD = 0.6


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of normalised tokens)."""
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    prev = [0] * (len(ref) + 1)
    for p in pred:
        cur = [0]
        for j, r in enumerate(ref, start=1):
            cur.append(prev[j - 1] + 1 if p == r else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# Retrieval -------------------------------------------------------------------------------------


def is_gold(file_name: str, section: str | None, gold: Sequence[dict[str, str]]) -> bool:
    """Whether a chunk (its document's file name and its section path) is one of the gold
    sections: same file name, and the gold section or one of its subsections."""
    for g in gold:
        if file_name != g["document"].rsplit("/", 1)[-1]:
            continue
        want = g.get("section") or ""
        if not want or (section and (section == want or section.startswith(want + " > "))):
            return True
    return False


def reciprocal_rank(hits: Sequence[bool]) -> float:
    """1/rank of the first gold chunk among the retrieved (best first); 0 when none is."""
    return next((1.0 / rank for rank, hit in enumerate(hits, start=1) if hit), 0.0)


# Faithfulness ----------------------------------------------------------------------------------


def sentences(answer: str) -> list[str]:
    """The answer's sentences, each with the citations that end it."""
    return [s.strip() for s in _SENTENCE_END.split(answer.strip()) if s and s.strip()]


def abstains(answer: str) -> bool:
    """Whether the answer says the documents do not answer (the system prompt's wording)."""
    return bool(_ABSTAINS.search(answer))


def supports(passage: str, sentence: str) -> bool:
    """Deterministic support: the passage holds at least `SUPPORT_THRESHOLD` of the sentence's
    content words (ragas' non-LLM context metrics compare strings the same way)."""
    words = content_words(sentence)
    if not words:
        return False
    return len(words & content_words(passage)) / len(words) >= SUPPORT_THRESHOLD


Support = Callable[[str, str], bool]  # (passage, sentence) -> supported


class NliSupport:
    """Support by an NLI cross-encoder (TruLens' groundedness without a judge LLM): the
    passage entails the sentence with probability above one half. `model_path` is a local
    sentence-transformers CrossEncoder whose labels include "entailment"."""

    def __init__(self, model_path: str) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_path, local_files_only=True)
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        if "entailment" not in labels:
            raise ValueError(f"{model_path}: not an NLI model (labels {sorted(labels)})")
        self.entailment = labels["entailment"]
        self._cache: dict[tuple[str, str], bool] = {}

    def __call__(self, passage: str, sentence: str) -> bool:
        key = (passage, sentence)
        if key not in self._cache:
            probs = self.model.predict([(passage, sentence)], apply_softmax=True)[0]
            self._cache[key] = float(probs[self.entailment]) > 0.5
        return self._cache[key]


def claims(answer: str) -> list[str]:
    """The sentences that state something: abstentions and bare citations make no claim."""
    return [s for s in sentences(answer) if content_words(s) and not abstains(s)]


def groundedness(answer: str, passages: Sequence[str], support: Support = supports) -> float:
    """Share of claim sentences supported by at least one passage; NaN without claims."""
    stated = claims(answer)
    if not stated:
        return NAN
    return sum(any(support(p, s) for p in passages) for s in stated) / len(stated)


def citation_correctness(
    answer: str, passages: Sequence[str], support: Support = supports
) -> float:
    """Share of [n] citations that name an existing passage supporting their sentence; NaN
    when the answer cites nothing."""
    total = correct = 0
    for sentence in sentences(answer):
        for n in (int(m) for m in _CITATION.findall(sentence)):
            total += 1
            correct += 1 <= n <= len(passages) and support(passages[n - 1], sentence)
    return correct / total if total else NAN


def abstention(answer: str, answerable: bool) -> float:
    """1 when the answer abstains exactly when the question is unanswerable."""
    return float(abstains(answer) != answerable)


def completeness(answer: str) -> float:
    """1 when the answer is whole: it ends a sentence (not cut by the token limit) and copies
    none of the prompt's scaffolding."""
    text = _CITATION.sub("", answer).strip().rstrip("*_`\"')] ")
    ended = bool(text) and text[-1] in ".!?:"
    return float(ended and not _SCAFFOLDING.search(answer))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def mean(values: Sequence[float]) -> float:
    """Mean over the values that apply (not NaN); NaN when none does."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else NAN


def answer_scores(
    answer: str,
    reference: str,
    passages: Sequence[str] | None,
    answerable: bool | None,
    support: Support = supports,
) -> dict[str, Any]:
    """The text metrics of one answer (retrieval and relevancy are scored where they need the
    retriever and the embedding model)."""
    scores = {
        "token_f1": token_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
        "completeness": completeness(answer),
        "groundedness": NAN,
        "citation_correctness": NAN,
        "abstention": NAN if answerable is None else abstention(answer, answerable),
    }
    if passages is not None:
        scores["groundedness"] = groundedness(answer, passages, support)
        scores["citation_correctness"] = citation_correctness(answer, passages, support)
    return scores
