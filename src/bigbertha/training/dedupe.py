"""Near-duplicate training rows: MinHash over character shingles, verified exactly.

An alert storm of users asking the same question, or a curated row re-rated in the chatbot,
would otherwise weigh one answer many times in a fine-tune. Two rows are near duplicates when
the Jaccard similarity of their shingle sets reaches ``finetune.near_duplicate_threshold``.

- What is compared: the question and the answer, normalised (Unicode NFKC, case-folded,
  punctuation and runs of whitespace collapsed), not the retrieved passages: different
  questions answered from the same passages are different rows (`prompts.question_of`).
- Shingles: character 3-grams. Chat turns are short: one inserted letter changes up to n
  shingles, so longer ones (or word n-grams) put a spelling variant of a question below any
  useful threshold ("what color/colour is the sky?" scores 0.83 with 3-grams, 0.73 with
  5-grams), while different questions stay far below it (0.1 to 0.5 on our examples).
- Candidates: datasketch's MinHashLSH (128 permutations) finds likely pairs without comparing
  every row with every other (thousands of rows: millions of pairs in pure Python), tuned to
  a lower threshold than ours so that it rarely misses a pair; each candidate is then checked
  with the exact Jaccard of the two sets, so MinHash's estimation error never drops a row.
The first row seen is kept: curated sources (in order) before feedback, newest feedback first.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from bigbertha.models.prompts import Message, question_of

SHINGLE = 3
PERMUTATIONS = 128
LSH_MARGIN = 0.75


def normalise(text: str) -> str:
    """Case-folded NFKC text with punctuation and whitespace runs as single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def shingles(text: str) -> set[str]:
    if len(text) <= SHINGLE:
        return {text}
    return {text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def key(prompt: list[Message], completion: list[Message]) -> str:
    """What makes a row the row it is: its question and its answer, normalised."""
    return normalise(question_of(prompt)) + " \x1f " + normalise(completion[-1]["content"])


class NearDuplicates:
    """Remembers kept rows; `seen` says whether a new one is a near duplicate of one of them."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        # LSH misses some pairs just above its own threshold: tune it below ours, weighted
        # against misses; the exact check below removes the extra candidates.
        self.lsh = MinHashLSH(
            threshold=threshold * LSH_MARGIN, num_perm=PERMUTATIONS, weights=(0.1, 0.9)
        )
        self.sets: dict[str, set[str]] = {}

    def seen(self, text: str) -> bool:
        """True if `text` is a near duplicate of a kept row; otherwise keep it and say False."""
        from datasketch import MinHash

        grams = shingles(text)
        signature: Any = MinHash(num_perm=PERMUTATIONS)
        signature.update_batch([g.encode() for g in grams])
        for other in self.lsh.query(signature):
            if jaccard(grams, self.sets[other]) >= self.threshold:
                return True
        name = str(len(self.sets))
        self.sets[name] = grams
        self.lsh.insert(name, signature)
        return False
