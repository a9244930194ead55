"""Words of a text as the evaluation metrics and retrieval's keyword test compare them: SQuAD
normalisation (lower case, no punctuation, no articles) and a short stop-word list."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_CITATION = re.compile(r"\[(\d+)\]")
# Words that carry no claim: a sentence is judged on the rest (SMART-style short list).
_STOPWORDS = (
    "i me my we our you your he she it its they them their what which who whom this that these "
    "those am is are was were be been being have has had having do does did doing but if or "
    "because as until while of at by for with about against between into through during before "
    "after above below to from up down in out on off over under again further then once here "
    "there when where why how all any both each few more most other some such no nor not only "
    "own same so than too very s t can will just don should now and also use used using"
)
STOPWORDS = frozenset(_STOPWORDS.split())


def normalize(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation, no articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def content_words(text: str) -> set[str]:
    """The normalised words that carry meaning: no stop words, no `[n]` citation markers."""
    return {w for w in normalize(_CITATION.sub(" ", text)) if w not in STOPWORDS}
