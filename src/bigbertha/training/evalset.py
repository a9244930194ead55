"""The evaluation set of record: the golden set, plus held-out up-rated turns when given.

Rows (JSONL), one question each:

    {"id": "rollback-1", "question": "...", "reference": "...", "answerable": true,
     "kind": "plain", "gold": [{"document": "docs/rollback.md", "section": "Rollback > The model"}]}

- golden rows (``evaluate.golden``, path or s3://; the project ships
  ``bigbertha/training/golden/bigbertha-docs.jsonl``): a curated question, its reference answer
  and the gold sections that answer it; ``kind`` plain, keyword, paraphrase, or unanswerable
  (gold ``[]``, the right answer an abstention);
- held-out feedback rows (``--data``, written by prepare-data beside the training file, split by
  conversation): kind ``feedback``, the up-rated answer as reference, no gold sections;
- rows in the training formats (prompt/completion, question/context/reference) are still read,
  as kind ``handed-in``: they carry their own prompt, so they score perplexity and answer
  metrics but not retrieval (the gate's set of record has none of them).

A bad row is reported on one line naming its place and reason, and skipped; the rest are kept.
The set's hash is SHA-256 over the canonical kept rows in order (`data.dataset_hash`), so the
same rows give the same hash wherever they are read; it names the set in the gate's report, on
the MLflow run (MLflow dataset tracking) and on the registered version.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError
from bigbertha.models.prompts import Message
from bigbertha.training import data as training_data

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

KINDS = ("plain", "keyword", "paraphrase", "unanswerable", "feedback")
ABSTENTION = "The documents do not say."
GOLDEN_PACKAGE_FILE = "golden/bigbertha-docs.jsonl"  # inside bigbertha.training


@dataclass(frozen=True)
class Item:
    """One question of the evaluation set."""

    id: str
    reference: str
    kind: str
    question: str | None = None  # None: a handed-in prompt (training-format row)
    answerable: bool | None = None
    gold: tuple[tuple[str, str], ...] = ()  # (document, section)
    prompt: tuple[Message, ...] | None = None

    def record(self) -> dict[str, Any]:
        """The canonical row the hash covers."""
        if self.prompt is not None:
            return {
                "id": self.id,
                "kind": self.kind,
                "prompt": list(self.prompt),
                "reference": self.reference,
            }
        return {
            "id": self.id,
            "question": self.question,
            "reference": self.reference,
            "answerable": self.answerable,
            "kind": self.kind,
            "gold": [{"document": d, "section": s} for d, s in self.gold],
        }


@dataclass
class EvalSet:
    """The kept rows, where they came from, and what was rejected."""

    sources: list[str]
    items: list[Item]
    rejected: list[str] = field(default_factory=list)

    @property
    def hash(self) -> str:
        return training_data.dataset_hash(item.record() for item in self.items)

    @property
    def name(self) -> str:
        return " + ".join(self.sources)

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for item in self.items:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
        return kinds


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value.strip()


def _gold(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise ValueError("'gold' must be a list of {document, section}")
    gold = []
    for g in value:
        if not isinstance(g, dict) or not isinstance(g.get("document"), str) or not g["document"]:
            raise ValueError("each 'gold' entry needs a non-empty 'document'")
        section = g.get("section") or ""
        if not isinstance(section, str):
            raise ValueError("a 'gold' entry's 'section' must be a string")
        gold.append((g["document"], section))
    return tuple(gold)


def to_item(row: Any, default_id: str) -> Item:
    """One JSONL row as an evaluation item; ValueError says why not."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "answerable" not in row and "gold" not in row:  # a training-format row
        example = training_data.to_example(row)
        given = row.get("id")
        return Item(
            given if isinstance(given, str) and given.strip() else default_id,
            example["completion"][0]["content"],
            "handed-in",
            prompt=tuple(example["prompt"]),
        )
    ident = row.get("id", default_id)
    if not isinstance(ident, str) or not ident.strip():
        raise ValueError("'id' must be a non-empty string")
    answerable = row.get("answerable")
    if not isinstance(answerable, bool):
        raise ValueError("'answerable' must be true or false")
    kind = row.get("kind", "plain" if answerable else "unanswerable")
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    gold = _gold(row.get("gold", []))
    if not answerable and gold:
        raise ValueError("an unanswerable question has no gold sections")
    if answerable and not gold and kind != "feedback":
        raise ValueError("an answerable golden question needs its gold sections")
    if (kind == "unanswerable") == answerable:
        raise ValueError("kind 'unanswerable' and 'answerable' disagree")
    return Item(
        ident.strip(),
        _text(row, "reference"),
        kind,
        question=_text(row, "question"),
        answerable=answerable,
        gold=gold,
    )


def parse(data: bytes, source: str) -> tuple[list[Item], list[str]]:
    """Items from JSONL bytes, and one '<source>:<line>: <reason>' per rejected row."""
    items: list[Item] = []
    rejected: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = to_item(json.loads(line), f"{source}:{number}")
            if item.id in seen:
                raise ValueError(f"id {item.id!r} repeats an earlier row")
        except json.JSONDecodeError as exc:
            rejected.append(f"{source}:{number}: not JSON ({exc.msg})")
            continue
        except ValueError as exc:
            rejected.append(f"{source}:{number}: {exc}")
            continue
        seen.add(item.id)
        items.append(item)
    return items, rejected


def shipped_golden() -> bytes:
    """The golden set the project ships for its own docs (the demo's seed documents)."""
    from importlib.resources import files

    return files("bigbertha.training").joinpath(GOLDEN_PACKAGE_FILE).read_bytes()


def load(settings: Settings, data: str | None = None) -> EvalSet:
    """The evaluation set: ``evaluate.golden`` (if set) then `data` (or ``evaluate.data``);
    at most ``evaluate.max_examples`` rows, golden rows first. ConfigError when neither is set;
    DatasetTooSmall when no row is usable."""
    sources = [uri for uri in (settings.evaluate.golden, data or settings.evaluate.data) if uri]
    if not sources:
        raise ConfigError("no evaluation set: set evaluate.golden or pass --data (evaluate.data)")
    result = EvalSet(sources, [])
    for uri in sources:
        items, rejected = parse(storage.read_bytes(settings, uri), uri)
        known = {item.id for item in result.items}
        for item in items:
            if item.id in known:
                rejected.append(f"{uri}: id {item.id!r} is already in an earlier file")
            else:
                result.items.append(item)
        result.rejected.extend(rejected)
    for line in result.rejected:
        log.warning("evaluation set: skipped %s", line)
    if not result.items:
        raise training_data.DatasetTooSmall(f"evaluation set {result.name}: no usable examples")
    result.items = result.items[: settings.evaluate.max_examples]
    return result


def log_to_mlflow(evalset: EvalSet) -> None:
    """Log the set as the active run's input (MLflow dataset tracking), digest = our hash."""
    import mlflow
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame(
        [
            {**item.record(), "gold": json.dumps(item.record().get("gold", []))}
            for item in evalset.items
        ]
    )
    frame = frame.drop(columns=[c for c in ("prompt",) if c in frame.columns])
    with warnings.catch_warnings():
        # A local path matches two equivalent source types; MLflow picks one and says so.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        dataset = from_pandas(
            frame,
            source=evalset.sources[0],
            targets="reference",
            name=f"eval-{evalset.hash[:12]}",
            digest=evalset.hash[:36],
        )
    mlflow.log_input(dataset, context="evaluation")
