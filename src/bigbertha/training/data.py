"""Training data for fine-tuning: curated JSONL plus the chatbot's up-rated turns.

Run as a workflow step (the DAG's prepare-data):

    bigbertha prepare-data --data s3://datasets/curated.jsonl --output s3://runs/wf-1/data.jsonl \\
        --eval-output s3://runs/wf-1/eval-feedback.jsonl

prepare-data writes the training file of record once (`prepare`); finetune trains on that file
and nothing else (`load`: no rebuild, no second read of the feedback log). The dataset hash is
the SHA-256 of the file's bytes as written, so the manifest, the finetune run and the
registered version carry one hash, and `load` refuses a file whose bytes no longer match its
manifest.

Accepted rows (one JSON object per line; blank lines and ``#`` comments are ignored):
- ``{"prompt": "...", "completion": "..."}``
- ``{"question": "...", "context": "..." | ["...", {"text": "...", "label": "..."}, ...],
  "answer" | "reference": "..."}``: a RAG example, prompted exactly as the chatbot prompts
  (`bigbertha.models.prompts.build_messages`; no context means the no-context prompt)
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``: the last
  message must be the assistant's answer; everything before it is the prompt.
Every source becomes the same conversational prompt/completion form that trl's SFTTrainer
trains on (loss on the completion only). Malformed rows are reported with file and line and
skipped; fewer than ``finetune.min_examples`` usable examples stop the run with
`DatasetTooSmall` before any model is loaded.

The chatbot sends one prompt (`build_messages`); question rows and feedback turns are prompted
by it, but prompt/completion and messages rows bring prompts of their own, which the model
would learn to answer and never be sent. Such rows are counted per source in the data card
(``foreign_prompts``) with a warning, and left out as ``foreign_prompt`` when
``finetune.served_prompts_only`` is on (strict train/serve parity).

Up-rated turns are split by conversation (`held_out`: a hash of the conversation id against
``finetune.eval_share``): a held-out conversation's turns are evaluation rows (``--eval-output``,
the gate's held-out feedback), the others training rows, so no conversation is in both. An
up-rated answer is kept up to its last complete sentence (`complete_sentences`): the chatbot
stops at its token limit, and a target cut mid-sentence teaches cutting.

Anyone can rate a chat turn up, so every row passes the same guards, in this order
(`Guard.admit`), each counted per reason in the data card:
1. ``duplicate``: an exact copy of a row already kept;
2. ``too_long``: more than ``finetune.max_seq_length`` tokens with the chat template applied,
   counted with the base model's tokenizer (the trainer would cut the answer off there), or,
   when it cannot be loaded, approximated as one token per 3 UTF-8 bytes plus 4 per message
   (byte-level BPE vocabularies average ~4 bytes per English token: this errs towards dropping);
   a row over 64 bytes per allowed token is too long without being tokenised;
3. personal data and secrets (`bigbertha.training.pii`): redacted (``finetune.pii: redact``)
   or the row dropped as ``personal_data`` (``drop``); a redacted row is counted again;
4. ``near_duplicate``: as close as ``finetune.near_duplicate_threshold`` to a kept row
   (`bigbertha.training.dedupe`), checked after redaction.
The data card (rows read and kept, dropped per reason, redactions per entity type, the limits
and the hash) is part of the manifest and of the MLflow runs of prepare-data and finetune.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError, InputError
from bigbertha.models.prompts import (
    NO_CONTEXT_PROMPT,
    SYSTEM_PROMPT,
    Message,
    Passage,
    build_messages,
    question_of,
)
from bigbertha.telemetry.recorder import TRAINING_ROW_OUTCOMES

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

Example = dict[str, list[Message]]  # {"prompt": [...], "completion": [{"role": "assistant"...}]}
_ROLES = {"system", "user", "assistant"}


class DatasetTooSmall(InputError):
    """Too few usable examples to train on; nothing was trained."""


#: Why a row is left out: every outcome of bigbertha_training_rows_total but "kept"
#: (contributor_cap: a person's up-rated turns beyond finetune.max_rows_per_contributor).
DROP_REASONS = tuple(o for o in TRAINING_ROW_OUTCOMES if o != "kept")


@dataclass
class Dataset:
    """Normalised, guarded examples with where they came from, and what was left out."""

    examples: list[Example]
    rejected: list[str] = field(default_factory=list)  # "<source>:<line>: <reason>"
    counts: dict[str, int] = field(default_factory=dict)  # source -> examples kept
    read: int = 0  # rows that parsed, before the guards (malformed ones: `dropped`)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    redactions: Counter[str] = field(default_factory=Counter)  # entity type -> findings
    rows_redacted: int = 0
    limits: dict[str, Any] = field(default_factory=dict)
    foreign_prompts: dict[str, int] = field(default_factory=dict)  # source -> rows
    evaluation: list[dict[str, Any]] = field(default_factory=list)  # held-out feedback rows
    contributors: int = 0  # people whose up-rated turns were kept (pseudonyms, never names)

    @property
    def hash(self) -> str:
        """SHA-256 of `to_jsonl()`: the bytes prepare-data writes."""
        return hashlib.sha256(self.to_jsonl()).hexdigest()

    def to_jsonl(self) -> bytes:
        return "".join(canonical(e) + "\n" for e in self.examples).encode()

    def card(self) -> dict[str, Any]:
        """The data card: what was read, kept and left out, and why (read = kept + dropped)."""
        dropped = {reason: self.dropped[reason] for reason in DROP_REASONS}
        dropped["malformed"] += len(self.rejected)
        return {
            "rows": {"read": self.read + dropped["malformed"], "kept": len(self.examples)},
            "dropped": dropped,
            "redactions": dict(sorted(self.redactions.items())),
            "rows_redacted": self.rows_redacted,
            "kept_by_source": self.counts,
            "foreign_prompts": self.foreign_prompts,
            "held_out_for_evaluation": len(self.evaluation),
            "contributors": self.contributors,
            "limits": self.limits,
            "dataset_hash": self.hash,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "examples": len(self.examples),
            "dataset_hash": self.hash,
            "rejected": len(self.rejected),
            "rejected_rows": self.rejected[:50],
            "sources": self.counts,
            "data_card": self.card(),
        }


class TokenCounter:
    """Tokens of an example as the trainer sees it: the base model's chat template applied."""

    BYTES_PER_TOKEN = 3  # the approximation (module docstring)
    TOKENS_PER_MESSAGE = 4
    MAX_BYTES_PER_TOKEN = 64  # longer rows are too long without tokenising them

    def __init__(self, settings: Settings) -> None:
        from bigbertha.models import loading

        ref = settings.finetune.base_model
        self.tokenizer: Any = None
        try:
            self.tokenizer = loading.load_tokenizer(ref, settings)
            self.method = f"tokenizer of {ref}"
        except (ConfigError, ImportError, ValueError) as exc:  # not ServiceUnavailable
            self.method = (
                f"approximate: 1 token per {self.BYTES_PER_TOKEN} UTF-8 bytes "
                f"+ {self.TOKENS_PER_MESSAGE} per message"
            )
            log.warning("training data: counting tokens approximately (%s)", exc)

    def count(self, messages: list[Message], limit: int) -> int:
        """Tokens of `messages`; more than `limit` as soon as that is certain."""
        size = sum(len(m["content"].encode()) for m in messages)
        if size > limit * self.MAX_BYTES_PER_TOKEN:
            return limit + 1
        if self.tokenizer is None:
            approx = -(-size // self.BYTES_PER_TOKEN)
            return int(approx) + self.TOKENS_PER_MESSAGE * len(messages)
        if getattr(self.tokenizer, "chat_template", None):
            out = self.tokenizer.apply_chat_template(messages, tokenize=True)
            ids = out["input_ids"] if isinstance(out, Mapping) else out
        else:
            text = "\n".join(m["content"] for m in messages)
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return len(ids)


@functools.cache
def _redactor() -> Any:
    """One Presidio engine per process: building it takes seconds."""
    from bigbertha.training.pii import Redactor

    return Redactor()


class Guard:
    """The checks every row passes before it is training data (module docstring)."""

    def __init__(self, settings: Settings, dataset: Dataset) -> None:
        from bigbertha.training.dedupe import NearDuplicates

        s = settings.finetune
        self.dataset = dataset
        self.max_tokens = s.max_seq_length
        self.pii = s.pii
        self.tokens = TokenCounter(settings)
        self.redactor = _redactor()
        self.near = NearDuplicates(s.near_duplicate_threshold)
        self.exact: set[str] = set()
        dataset.limits = {
            "max_tokens": self.max_tokens,
            "token_counter": self.tokens.method,
            "near_duplicate_threshold": s.near_duplicate_threshold,
            "pii": self.pii,
            "pii_entities": self.redactor.entities,
        }

    def admit(self, example: Example) -> Example | None:
        """The example as it may be trained on, or None (the reason is counted)."""
        from bigbertha.training import dedupe

        drop = self.dataset.dropped
        raw = canonical(example)
        if raw in self.exact:
            drop["duplicate"] += 1
            return None
        self.exact.add(raw)
        messages = [*example["prompt"], *example["completion"]]
        if self.tokens.count(messages, self.max_tokens) > self.max_tokens:
            drop["too_long"] += 1
            return None
        found = self.redactor.redact(messages)
        if found.counts:
            self.dataset.redactions.update(found.counts)
            if self.pii == "drop":
                drop["personal_data"] += 1
                return None
            self.dataset.rows_redacted += 1
            messages = found.messages
            if self.tokens.count(messages, self.max_tokens) > self.max_tokens:
                drop["too_long"] += 1
                return None
            cut = len(example["prompt"])
            example = {"prompt": messages[:cut], "completion": messages[cut:]}
        if self.near.seen(dedupe.key(example["prompt"], example["completion"])):
            drop["near_duplicate"] += 1
            return None
        return example


def served_prompt(prompt: Sequence[Mapping[str, str]]) -> bool:
    """Whether `prompt` has the shape `build_messages` gives every prompt the chatbot sends."""
    if len(prompt) != 2 or [m.get("role") for m in prompt] != ["system", "user"]:
        return False
    system, user = prompt[0]["content"], prompt[1]["content"]
    if system == NO_CONTEXT_PROMPT:
        return True
    return (
        system == SYSTEM_PROMPT
        and user.startswith("Context passages:\n\n")
        and question_of(prompt) != user
    )


def held_out(conversation: str, share: float) -> bool:
    """Whether a conversation's turns are evaluation rows: deterministic, so a conversation is
    on the same side in every run (the first 8 bytes of its SHA-256 as a fraction)."""
    digest = hashlib.sha256(conversation.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def canonical(example: Mapping[str, Any]) -> str:
    return json.dumps(example, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def dataset_hash(examples: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 over the canonical JSON lines, in order: the same data gives the same hash."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(canonical(example).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value.strip()


def _passages(value: Any) -> list[Passage]:
    """A row's 'context': a string, or a list of strings or {"text", "label"} objects."""
    if value is None:
        return []
    if isinstance(value, str):
        return [Passage(value)] if value.strip() else []
    if not isinstance(value, list):
        raise ValueError("'context' must be a string or a list of passages")
    return [Passage.from_record(v) for v in value if not (isinstance(v, str) and not v.strip())]


def to_example(row: Any) -> Example:
    """One JSONL row as a conversational prompt/completion example; ValueError says why not."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "messages" in row:
        return _from_messages(row["messages"])
    if isinstance(row.get("prompt"), list):  # conversational prompt/completion (our own output)
        completion = row.get("completion")
        if not isinstance(completion, list) or len(completion) != 1:
            raise ValueError("conversational 'completion' must be a list of one message")
        return _from_messages([*row["prompt"], *completion])
    if "question" in row:
        answer_key = "answer" if "answer" in row else "reference"
        passages = _passages(row.get("context"))
        prompt = build_messages(_text(row, "question"), passages or None)
        return {"prompt": prompt, "completion": [_assistant(_text(row, answer_key))]}
    if "prompt" in row:
        prompt = [{"role": "user", "content": _text(row, "prompt")}]
        return {"prompt": prompt, "completion": [_assistant(_text(row, "completion"))]}
    raise ValueError("expected prompt/completion, question/context/answer or messages")


def _from_messages(messages: Any) -> Example:
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("'messages' must be a list of at least 2 messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ValueError("every message needs a role of system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise ValueError("every message needs non-empty string content")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return {"prompt": prompt, "completion": [_assistant(messages[-1]["content"])]}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text.strip()}


def parse_jsonl(data: bytes, source: str) -> tuple[list[Example], list[str]]:
    """Examples from JSONL bytes, and one '<source>:<line>: <reason>' per rejected row."""
    examples, rejected = [], []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            examples.append(to_example(json.loads(line)))
        except json.JSONDecodeError as exc:
            rejected.append(f"{source}:{number}: not JSON ({exc.msg})")
        except ValueError as exc:
            rejected.append(f"{source}:{number}: {exc}")
    return examples, rejected


# An answer ends a sentence: a full stop, ! or ?, then citations, quotes or brackets; or a
# citation or a code fence. The chatbot stops at llm.max_new_tokens, often mid-sentence.
_COMPLETE = re.compile(r"""(?:[.!?](?:\s*\[\d+\])*|\[\d+\]|```)["')\]]*\Z""")
_SENTENCE_END = re.compile(r"""[.!?](?:\s*\[\d+\])*["')\]]*(?=\s)""")


def complete_sentences(answer: str) -> str:
    """`answer` up to its last complete sentence (a served answer stops at the token limit:
    trained on as is, it would teach answers cut mid-sentence); ValueError when none ended."""
    text = answer.strip()
    if _COMPLETE.search(text):
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        raise ValueError("the answer was cut off before its first sentence ended")
    return text[: ends[-1]].strip()


def turn_example(record: Mapping[str, Any]) -> Example:
    """A logged chat turn as a training example whose prompt is the one the chatbot sent, and
    whose target is its answer's complete sentences."""
    context = record.get("context", [])
    if context == []:  # not logged, or the answer did not come from the model
        raise ValueError("no prompt was logged for it (the model was not asked)")
    passages = None if context is None else _passages(context)
    return {
        "prompt": build_messages(_text(record, "question"), passages),
        "completion": [_assistant(complete_sentences(_text(record, "answer")))],
    }


@dataclass
class Feedback:
    """Up-rated turns: training examples, held-out evaluation rows, and unusable turns."""

    examples: list[Example] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    unusable: int = 0
    capped: int = 0  # turns left out: their person had max_rows_per_contributor already
    contributors: int = 0  # people (pseudonyms) whose turns were kept


def eval_row(turn_id: str, conversation: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A held-out up-rated turn in the evaluation set's row format (the gate reads it)."""
    return {
        "id": f"feedback-{turn_id}",
        "question": _text(record, "question"),
        "reference": complete_sentences(_text(record, "answer")),
        "gold": [],
        "answerable": True,
        "kind": "feedback",
        "conversation": conversation,
    }


def feedback_examples(settings: Settings, limit: int) -> Feedback:
    """Turns users rated up (latest rating per turn wins), newest first, at most `limit` on
    each side of the conversation split (`held_out`), and at most
    ``finetune.max_rows_per_contributor`` of one person's (their pseudonym, `contributor`):
    no one person's votes can make up a training set. Turns logged before people were
    (no `contributor`) are not capped."""
    out = Feedback()
    if limit <= 0 or settings.redis.url is None:
        return out
    from bigbertha.telemetry.feedback import FeedbackLog

    records = FeedbackLog.from_settings(settings).read()  # newest first
    rating: dict[str, str | None] = {}
    turns: dict[str, dict[str, Any]] = {}
    for record in records:
        turn_id = record.get("turn_id")
        if not isinstance(turn_id, str):
            continue
        if turn_id not in rating or rating[turn_id] is None:  # the newest rating wins
            rating[turn_id] = record.get("rating")
        turns.setdefault(turn_id, record)
    share, cap = settings.finetune.eval_share, settings.finetune.max_rows_per_contributor
    per_person: Counter[str] = Counter()
    for turn_id, record in turns.items():
        if rating.get(turn_id) != "up":
            continue
        # Turns logged before conversations were: each is its own conversation.
        conversation = str(record.get("conversation") or f"turn-{turn_id}")
        evaluation = held_out(conversation, share)
        if len(out.evaluation if evaluation else out.examples) >= limit:
            continue
        person = record.get("contributor")
        if isinstance(person, str) and person:
            if cap and per_person[person] >= cap:
                out.capped += 1
                continue
            per_person[person] += 1
        try:
            example = turn_example(record)
            row = eval_row(turn_id, conversation, record) if evaluation else None
        except ValueError as exc:
            log.warning("feedback log: turn %s skipped: %s", turn_id, exc)
            out.unusable += 1
            continue
        if row is not None:
            out.evaluation.append(row)
        else:
            out.examples.append(example)
    out.contributors = len(per_person)
    if out.capped:
        log.warning(
            "feedback log: %d up-rated turns left out: their person had %d already "
            "(finetune.max_rows_per_contributor)",
            out.capped,
            cap,
        )
    return out


def build(
    settings: Settings, sources: Sequence[str] | None = None, *, feedback: int | None = None
) -> Dataset:
    """Read curated sources and the feedback log, normalise, guard (module docstring) and
    check the size."""
    sources = list(settings.finetune.data if sources is None else sources)
    limit = settings.finetune.feedback_examples if feedback is None else feedback
    dataset = Dataset(examples=[])
    # 1. Read everything first: storage or Redis down fails before the guards load models.
    read: list[tuple[str, list[Example]]] = []
    for uri in sources:
        examples, rejected = parse_jsonl(storage.read_bytes(settings, uri), uri)
        for line in rejected:
            log.warning("training data: skipped %s", line)
        dataset.rejected.extend(rejected)
        read.append((uri, _served_only(settings, dataset, uri, examples)))
    turns = feedback_examples(settings, limit)
    dataset.dropped["malformed"] += turns.unusable
    # Read but left out before the guards, so read = kept + dropped still holds.
    dataset.dropped["contributor_cap"] += turns.capped
    dataset.read += turns.capped
    dataset.contributors = turns.contributors
    dataset.evaluation = _redacted_rows(settings, turns.evaluation)
    read.append(("feedback", turns.examples))
    distinct = {canonical(e) for _, examples in read for e in examples}
    _check_size(settings, sources, dataset, len(distinct))  # the guards only take rows away
    # 2. Every row through the guards, curated sources first.
    guard = Guard(settings, dataset)
    for origin, examples in read:
        kept = 0
        for example in examples:
            dataset.read += 1
            admitted = guard.admit(example)
            if admitted is not None:
                dataset.examples.append(admitted)
                kept += 1
        dataset.counts[origin] = dataset.counts.get(origin, 0) + kept
    _check_size(settings, sources, dataset, len(dataset.examples))
    card = dataset.card()
    log.info(
        "training data: %d examples (%s), %d rejected, dropped %s, redacted %s, hash %s",
        len(dataset.examples),
        dataset.counts,
        len(dataset.rejected),
        {k: v for k, v in card["dropped"].items() if v},
        card["redactions"],
        dataset.hash[:12],
        extra={"data_card": card},
    )
    return dataset


def _served_only(
    settings: Settings, dataset: Dataset, source: str, examples: list[Example]
) -> list[Example]:
    """Count (and, with ``finetune.served_prompts_only``, leave out) rows whose prompt the
    chatbot never sends."""
    served = [e for e in examples if served_prompt(e["prompt"])]
    foreign = len(examples) - len(served)
    if not foreign:
        return examples
    dataset.foreign_prompts[source] = foreign
    strict = settings.finetune.served_prompts_only
    log.warning(
        "training data: %s: %d of %d rows use a prompt the chatbot does not send "
        "(prompt/completion or messages rows)%s",
        source,
        foreign,
        len(examples),
        "; left out (finetune.served_prompts_only)"
        if strict
        else "; set finetune.served_prompts_only to leave them out",
    )
    if not strict:
        return examples
    dataset.read += foreign
    dataset.dropped["foreign_prompt"] += foreign
    return served


def _redacted_rows(settings: Settings, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out rows pass the personal-data guard too: the gate logs them to MLflow."""
    if not rows:
        return rows
    redactor = _redactor()
    out = []
    for row in rows:
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["reference"]},
        ]
        found = redactor.redact(messages)
        if found.counts:
            if settings.finetune.pii == "drop":
                continue
            row = {**row, "question": found.messages[0]["content"]}
            row["reference"] = found.messages[1]["content"]
        out.append(row)
    return out


def _check_size(settings: Settings, sources: Sequence[str], dataset: Dataset, usable: int) -> None:
    needed = settings.finetune.min_examples
    if usable < needed:
        where = ", ".join(sources) or "no curated data"
        dropped = sum(dataset.dropped.values())
        raise DatasetTooSmall(
            f"training data ({where}; feedback log): {usable} usable examples, need at least "
            f"{needed} (finetune.min_examples); {len(dataset.rejected)} rows rejected"
            + (f", {dropped} left out by the guards" if dropped else "")
        )


def manifest_uri(output: str) -> str:
    """Where the manifest of a dataset written to `output` goes: beside it."""
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return f"{stem}.manifest.json"


def prepare(
    settings: Settings,
    sources: Sequence[str] | None,
    output: str,
    *,
    eval_output: str | None = None,
    lineage: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build the dataset, write it as one canonical JSONL to `output` (path or s3://) with its
    manifest beside it (and the held-out feedback rows to `eval_output`), and record them in
    an MLflow run tagged with the run's lineage (the alert that asked for it and the workflow).
    Returns the manifest."""
    import mlflow

    from bigbertha.models import registry, tracking
    from bigbertha.telemetry.recorder import Recorder

    tracking.bound_client_retries(settings)
    lineage = {k: v for k, v in (lineage or {}).items() if v}
    dataset = build(settings, sources)
    data = dataset.to_jsonl()
    manifest = {"output": output, **dataset.summary(), "lineage": lineage}
    manifest["dataset_hash"] = hashlib.sha256(data).hexdigest()  # of the bytes written
    if eval_output:
        rows = "".join(canonical(r) + "\n" for r in dataset.evaluation).encode()
        storage.write_bytes(settings, eval_output, rows)
        manifest["evaluation"] = {
            "output": eval_output,
            "rows": len(dataset.evaluation),
            "hash": hashlib.sha256(rows).hexdigest(),
            "eval_share": settings.finetune.eval_share,
        }
    storage.write_bytes(settings, output, data)
    storage.write_bytes(settings, manifest_uri(output), json.dumps(manifest, indent=2).encode())
    # The dashboard's "Training rows" panel: what was kept and what left out, and why.
    card = dataset.card()
    Recorder.from_settings(settings).record_training_rows(
        {"kept": card["rows"]["kept"], **card["dropped"]}
    )
    run_name = f"prepare-data-{lineage.get('workflow_name', 'local')}"
    with registry.mlflow_errors(settings):
        registry.client(settings)
        mlflow.set_experiment(registry.EXPERIMENT)
        with mlflow.start_run(run_name=run_name, tags=tracking.owner_tags()):
            mlflow.set_tags(
                {"step": "prepare-data", "dataset_hash": manifest["dataset_hash"], **lineage}
            )
            mlflow.log_params(
                {"examples": len(dataset.examples), "rejected_rows": len(dataset.rejected)}
            )
            log_card(dataset)
            mlflow.log_dict(manifest, "data_manifest.json")
    return manifest


def log_card(dataset: Dataset | Prepared) -> None:
    """The data card on the active MLflow run: as an artifact and as metrics to compare runs."""
    import mlflow

    card = dataset.card()
    mlflow.log_dict(card, "data_card.json")
    metrics = {"data.rows_read": card["rows"]["read"], "data.rows_kept": card["rows"]["kept"]}
    metrics |= {f"data.dropped.{k}": v for k, v in card.get("dropped", {}).items()}
    metrics |= {f"data.redacted.{k}": v for k, v in card.get("redactions", {}).items()}
    # Per source in the card's artifact: a source URI is not a valid metric name.
    metrics["data.foreign_prompts"] = sum(card.get("foreign_prompts", {}).values())
    metrics["data.contributors"] = card.get("contributors", 0)
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


@dataclass
class Prepared:
    """The training file of record as finetune reads it: its examples, the SHA-256 of its
    bytes, and the manifest prepare-data wrote beside it (None for a file it did not write)."""

    uri: str
    examples: list[Example]
    hash: str
    manifest: dict[str, Any] | None

    def card(self) -> dict[str, Any]:
        """The manifest's data card, or what is known without one."""
        if self.manifest is not None and isinstance(self.manifest.get("data_card"), dict):
            return dict(self.manifest["data_card"])
        return {"rows": {"read": len(self.examples), "kept": len(self.examples)}}


def _read_manifest(settings: Settings, uri: str) -> dict[str, Any] | None:
    where = manifest_uri(uri)
    try:
        if storage.is_s3(where):
            raw = storage.read_bytes(settings, where)
        elif Path(where).is_file():
            raw = Path(where).read_bytes()
        else:
            return None
    except storage.ObjectMissing:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"data manifest {where}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("dataset_hash"), str):
        raise InputError(f"data manifest {where}: no dataset_hash")
    return manifest


def load(settings: Settings, uri: str) -> Prepared:
    """The training file at `uri`, read once and trained on as written: every row must be an
    example, its hash must match its manifest (when prepare-data wrote one), and there must be
    ``finetune.min_examples`` rows. Nothing is added, guarded again or rebuilt."""
    raw = storage.read_bytes(settings, uri)
    digest = hashlib.sha256(raw).hexdigest()
    manifest = _read_manifest(settings, uri)
    if manifest is not None and manifest["dataset_hash"] != digest:
        raise InputError(
            f"training file {uri}: SHA-256 {digest[:12]} is not its manifest's "
            f"{manifest['dataset_hash'][:12]} ({manifest_uri(uri)}): the file changed after "
            "prepare-data wrote it; run prepare-data again"
        )
    examples, rejected = parse_jsonl(raw, uri)
    if rejected:
        raise InputError(
            f"training file {uri}: {len(rejected)} rows are not training examples "
            f"(first: {rejected[0]}); train on what prepare-data writes"
        )
    needed = settings.finetune.min_examples
    if len(examples) < needed:
        raise DatasetTooSmall(
            f"training file {uri}: {len(examples)} examples, need at least {needed} "
            "(finetune.min_examples)"
        )
    if manifest is None:
        log.warning(
            "training file %s has no manifest beside it (%s): trained on as given, without "
            "prepare-data's guards",
            uri,
            manifest_uri(uri),
        )
    return Prepared(uri, examples, digest, manifest)
