"""The prompt a model is served and trained with: one builder for every side of the contract.

The chatbot (`chat.rag`), training-data preparation (`training.data`) and evaluation
(`training.evaluate`) all call `build_messages`, so a fine-tuned model is trained and
benchmarked on exactly the prompt it will see in production:

- passages: a system prompt that asks for answers from numbered passages with [n] citations,
  and a user message with the passages, each as ``Passage n: label`` (``Passage n`` when the
  passage has no label, as in curated data without one) over its text without the headings it
  opens with, then the question. The header never reads like a citation: with ``[n] (label)``
  headers SmolLM2 began its answers with ``[1]`` and then copied the header line after it
  (measured on the golden set: docs/evaluation.md);
- retrieval unavailable (``passages=None``): a system prompt that says the answer is not from
  the documents, and the bare question.

The chatbot logs each answer's passages with the turn (`Passage.to_record`), so a rated turn
becomes a training row whose prompt is rebuilt here, exactly as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}

SYSTEM_PROMPT = (
    "You are BigBertha, an assistant that answers questions about the user's documents. "
    "Answer only from the numbered context passages. Cite every fact with the number of its "
    "passage in square brackets, like [1]. If the passages do not contain the answer, say that "
    "the documents do not say. Be brief."
)
NO_CONTEXT_PROMPT = (
    "You are BigBertha, an assistant for the user's documents. The document search is "
    "unavailable right now, so answer from general knowledge, briefly, and say that the answer "
    "is not based on the documents."
)


@dataclass(frozen=True)
class Passage:
    """One context passage as the model sees it: its text and how it is cited."""

    text: str
    label: str | None = None

    def to_record(self) -> dict[str, str | None]:
        return {"text": self.text, "label": self.label}

    @classmethod
    def from_record(cls, value: Any) -> Passage:
        """A passage from a string or a ``{"text", "label"}`` object; ValueError says why not."""
        text: Any
        label: Any = None
        if isinstance(value, str):
            text = value
        elif isinstance(value, Mapping):
            text, label = value.get("text"), value.get("label")
        else:
            raise ValueError("a passage must be a string or an object with 'text'")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a passage needs non-empty 'text'")
        if label is not None and not isinstance(label, str):
            raise ValueError("a passage's 'label' must be a string")
        return cls(text, label or None)


class Cited(Protocol):
    """What a retrieved chunk offers the prompt (`bigbertha.documents.retrieval.Chunk`)."""

    @property
    def text(self) -> str: ...
    @property
    def label(self) -> str: ...


def passages_of(chunks: Sequence[Cited]) -> list[Passage]:
    """Retrieved chunks as the prompt's passages, cited by their labels (the chatbot's and the
    gate's prompts come from here)."""
    return [Passage(chunk.text, chunk.label) for chunk in chunks]


def build_messages(question: str, passages: Sequence[Passage] | None) -> list[Message]:
    """The chat messages for one answer; `passages=None` means retrieval was unavailable."""
    if passages is None:
        return [
            {"role": "system", "content": NO_CONTEXT_PROMPT},
            {"role": "user", "content": question},
        ]
    blocks = "\n\n".join(
        (f"Passage {n}: {p.label}" if p.label else f"Passage {n}") + f"\n{body(p.text)}"
        for n, p in enumerate(passages, start=1)
    )
    user = f"Context passages:\n\n{blocks}\n\nQuestion: {question}\nAnswer with citations:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# Markdown headings that open a chunk: its label already names the section.
_LEADING_HEADINGS = re.compile(r"\A(?:[ \t]*#{1,6}[ \t][^\n]*(?:\n[ \t]*)+)+")


def body(text: str) -> str:
    """A passage's text as the prompt shows it: without the headings it opens with, which its
    label already names. A small model copies a heading line into the answer instead of
    answering (the demo's base and fine-tuned SmolLM2 did); a heading-only passage stays."""
    text = text.strip()
    return _LEADING_HEADINGS.sub("", text) or text


_QUESTION = re.compile(r"\n\nQuestion: (?P<question>.*)\nAnswer with citations:\Z", re.DOTALL)


def question_of(prompt: Sequence[Mapping[str, str]]) -> str:
    """The question a prompt asks: its last user message, without the passages
    `build_messages` put before it (training data deduplicates on questions, not passages)."""
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        return ""
    match = _QUESTION.search(users[-1]) if users[-1].startswith("Context passages:") else None
    return match["question"] if match else users[-1]
