"""Training data: formats, malformed rows, feedback-log examples, size check, hash, storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import storage
from bigbertha.core.settings import Settings
from bigbertha.models.prompts import Passage, build_messages
from bigbertha.telemetry.feedback import KEY as FEEDBACK_KEY
from bigbertha.training import data as training_data

ROWS = [
    {"prompt": "what color is the sky ?", "completion": "the sky is blue"},
    {
        "question": "who wrote the runbook ?",
        "context": ["the runbook was written by ada .", "it is long ."],
        "reference": "ada [1]",
    },
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    },
]


def settings_for(**finetune: Any) -> Settings:
    return Settings(finetune={"min_examples": 1, "feedback_examples": 0, **finetune})


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_every_format_becomes_a_conversational_prompt_completion() -> None:
    examples = [training_data.to_example(row) for row in ROWS]
    assert examples[0] == {
        "prompt": [{"role": "user", "content": "what color is the sky ?"}],
        "completion": [{"role": "assistant", "content": "the sky is blue"}],
    }
    rag_user = examples[1]["prompt"][1]["content"]
    assert examples[1]["prompt"][0]["role"] == "system"
    assert "[1]\nthe runbook was written by ada ." in rag_user and "[2]\nit is long ." in rag_user
    assert rag_user.endswith("Question: who wrote the runbook ?\nAnswer with citations:")
    assert examples[2]["prompt"][-1] == {"role": "user", "content": "hi"}
    assert examples[2]["completion"] == [{"role": "assistant", "content": "hello"}]
    # Our own output format reads back unchanged (prepare-data -> finetune).
    assert [training_data.to_example(e) for e in examples] == examples


def test_malformed_rows_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    uri = write(
        tmp_path / "mixed.jsonl",
        [
            json.dumps(ROWS[0]),
            "{not json",
            json.dumps({"prompt": "no completion"}),
            "",
            "# a comment",
            json.dumps(
                {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}
            ),
            json.dumps(["a list"]),
            json.dumps(ROWS[2]),
        ],
    )
    dataset = training_data.build(settings_for(), [uri])
    assert len(dataset.examples) == 2
    assert dataset.rejected == [
        f"{uri}:2: not JSON (Expecting property name enclosed in double quotes)",
        f"{uri}:3: 'completion' must be a non-empty string",
        f"{uri}:6: the last message must be the assistant's answer",
        f"{uri}:7: row is not a JSON object",
    ]


def test_too_small_dataset_stops_with_a_clear_error(tmp_path: Path) -> None:
    uri = write(tmp_path / "small.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[0]), "oops"])
    with pytest.raises(training_data.DatasetTooSmall) as err:
        training_data.build(settings_for(min_examples=5), [uri])
    message = str(err.value)
    assert "1 usable examples, need at least 5 (finetune.min_examples)" in message
    assert "1 rows rejected" in message and uri in message


def test_hash_is_stable_and_changes_with_the_data(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [json.dumps(r) for r in ROWS])
    b = write(tmp_path / "b.jsonl", [json.dumps(r) for r in reversed(ROWS)])
    first = training_data.build(settings_for(), [a])
    assert training_data.build(settings_for(), [a]).hash == first.hash
    assert training_data.build(settings_for(), [b]).hash != first.hash
    # Duplicates across sources are dropped, so the same data twice is the same dataset.
    assert training_data.build(settings_for(), [a, a]).hash == first.hash


def test_feedback_log_turns_rated_up_become_examples(redis_server: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.extra["url"])
    client.delete(FEEDBACK_KEY)

    passage = {"text": "BigBertha is an LLMOps platform.", "label": "a.pdf, page 1"}

    def turn(
        turn_id: str, question: str, answer: str, rating: str | None, ts: float, **extra: Any
    ) -> str:
        record = {
            "ts": ts,
            "question": question,
            "answer": answer,
            "sources": [{"source": "s3://docs/a.pdf", "page": 1, "score": 0.8}],
            "model_version": "3",
            "context": [passage],
            "rating": rating,
            "turn_id": turn_id,
        }
        return json.dumps({**record, **extra})

    # Oldest first; LPUSH makes the list newest first, as the chatbot writes it.
    for record in [
        turn("t1", "what is bigbertha ?", "an llmops platform", None, 1),
        turn("t2", "is it slow ?", "no", None, 2),
        turn("t1", "what is bigbertha ?", "an llmops platform", "up", 3),
        turn("t2", "is it slow ?", "no", "down", 4),
        turn("t3", "what is bigbertha ?", "an llmops platform", "up", 5),  # duplicate answer
        turn("t4", "changed my mind ?", "yes", "up", 6),
        turn("t4", "changed my mind ?", "yes", "down", 7),  # the newest rating wins
        turn("t5", "where are the docs ?", "in minio", "up", 8, context=None),
        turn("t6", "anything there ?", "I found nothing", "up", 9, context=[]),  # no model call
        "not json",
    ]:
        client.lpush(FEEDBACK_KEY, record)
    settings = Settings(
        redis={"url": redis_server.extra["url"], "timeout_seconds": 2},
        finetune={"min_examples": 1, "feedback_examples": 10},
    )
    dataset = training_data.build(settings, [])
    # Each prompt is rebuilt exactly as the chatbot sent it: with its passages, or without
    # context when retrieval was down; a turn the model never saw is not training data.
    assert [e["prompt"] for e in dataset.examples] == [
        build_messages("where are the docs ?", None),
        build_messages("what is bigbertha ?", [Passage(passage["text"], passage["label"])]),
    ]
    assert dataset.counts == {"feedback": 2}
    bounded = settings.model_copy(
        update={"finetune": settings.finetune.model_copy(update={"feedback_examples": 1})}
    )
    assert len(training_data.build(bounded, []).examples) == 1


def test_prepare_writes_the_dataset_and_its_manifest_to_object_storage(
    tmp_path: Path, s3_server: Any, mlflow_server: Any
) -> None:

    src = write(tmp_path / "curated.jsonl", [json.dumps(r) for r in ROWS])
    settings = Settings(
        s3={
            "endpoint": s3_server.extra["endpoint"],
            "access_key": s3_server.extra["access_key"],
            "secret_key": s3_server.extra["secret_key"],
        },
        finetune={"min_examples": 3, "feedback_examples": 0},
        mlflow={"tracking_uri": mlflow_server.url},
    )
    summary = training_data.prepare(
        settings, [src], "s3://runs/wf-1/data.jsonl", lineage={"workflow_name": "wf-1"}
    )
    assert summary["examples"] == 3 and summary["rejected"] == 0
    manifest = json.loads(storage.read_bytes(settings, "s3://runs/wf-1/data.manifest.json"))
    assert manifest == summary and manifest["lineage"] == {"workflow_name": "wf-1"}
    # The written object is the dataset itself: reading it back gives the same hash.
    again = training_data.build(settings, ["s3://runs/wf-1/data.jsonl"])
    assert again.hash == summary["dataset_hash"]
    assert storage.read_bytes(settings, "s3://runs/wf-1/data.jsonl").count(b"\n") == 3
