"""Training data: formats, malformed rows, feedback-log examples, size check, hash, storage."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import storage
from bigbertha.core.errors import InputError
from bigbertha.core.settings import Settings
from bigbertha.models.prompts import Passage, build_messages, question_of
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


# The evaluation row format the gate reads (training/evalset.py).
EVAL_KEYS = {"id", "question", "reference", "gold", "answerable", "kind", "conversation"}


def settings_for(**finetune: Any) -> Settings:
    return Settings(finetune={"min_examples": 1, "feedback_examples": 0, **finetune})


def write(path: Path, lines: Iterable[str]) -> str:
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
    assert "Passage 1\nthe runbook was written by ada ." in rag_user
    assert "Passage 2\nit is long ." in rag_user
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
        turn("t1", "what is bigbertha ?", "an llmops platform.", None, 1),
        turn("t2", "is it slow ?", "no", None, 2),
        turn("t1", "what is bigbertha ?", "an llmops platform.", "up", 3),
        turn("t2", "is it slow ?", "no", "down", 4),
        turn("t3", "what is bigbertha ?", "an llmops platform.", "up", 5),  # duplicate answer
        turn("t4", "changed my mind ?", "yes", "up", 6),
        turn("t4", "changed my mind ?", "yes", "down", 7),  # the newest rating wins
        turn("t5", "where are the docs ?", "in minio.", "up", 8, context=None),
        turn("t6", "anything there ?", "I found nothing", "up", 9, context=[]),  # no model call
        "not json",
    ]:
        client.lpush(FEEDBACK_KEY, record)
    settings = Settings(
        redis={"url": redis_server.extra["url"], "timeout_seconds": 2},
        finetune={"min_examples": 1, "feedback_examples": 10, "eval_share": 0},
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
    # The hash is the written object's: finetune reads it back as is, and its manifest agrees.
    written = storage.read_bytes(settings, "s3://runs/wf-1/data.jsonl")
    assert hashlib.sha256(written).hexdigest() == summary["dataset_hash"]
    loaded = training_data.load(settings, "s3://runs/wf-1/data.jsonl")
    assert loaded.hash == summary["dataset_hash"] and len(loaded.examples) == 3
    assert loaded.manifest == manifest and written.count(b"\n") == 3


# --- the guards: personal data, token limits, near duplicates ---------------------------------

# Planted as users paste them; each must be gone from the training file (also without spaces).
PLANTED = {
    "EMAIL_ADDRESS": ["jane.doe@example.com", "ops-oncall@corp.internal"],
    "PHONE_NUMBER": ["+1 415 555 2671", "+44 20 7946 0958", "(415) 555-2671"],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5555-5555-5555-4444"],
    "IBAN_CODE": ["DE89 3704 0044 0532 0130 00"],
    "IP_ADDRESS": ["10.12.7.201"],
    "AWS_ACCESS_KEY": ["AKIAIOSFODNN7EXAMPLE"],
    "GITHUB_TOKEN": ["ghp_1234567890abcdefghijABCDEFGHIJ123456"],
    "OPENAI_API_KEY": ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"],
    "SLACK_TOKEN": ["xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"],
    "HIGH_ENTROPY_SECRET": ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
    "SECRET_VALUE": ["hunter2hunter2"],
}


def planted_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Curated rows and up-rated chat turns, every planted value in one of their fields."""
    p = PLANTED
    curated = [
        {"prompt": f"my mail is {p['EMAIL_ADDRESS'][0]}, fix my account", "completion": "done"},
        {"prompt": "who is on call?", "completion": f"write to {p['EMAIL_ADDRESS'][1]}"},
        {
            "question": "how do I pay?",
            "context": [f"Pay with card {p['CREDIT_CARD'][0]} or IBAN {p['IBAN_CODE'][0]}."],
            "answer": "with the company card [1]",
        },
        {
            "messages": [
                {"role": "user", "content": f"why does {p['AWS_ACCESS_KEY'][0]} fail?"},
                {
                    "role": "assistant",
                    "content": f"rotate it; the secret {p['HIGH_ENTROPY_SECRET'][0]} leaked",
                },
            ]
        },
        {"prompt": "what color is the sky ?", "completion": "the sky is blue"},
    ]
    turns = [
        (f"call me on {p['PHONE_NUMBER'][0]} or {p['PHONE_NUMBER'][2]}", "I cannot call.", None),
        ("which host is down?", f"the server at {p['IP_ADDRESS'][0]} is.", None),
        ("my token does not work", f"{p['GITHUB_TOKEN'][0]} was revoked.", None),
        (f"is {p['OPENAI_API_KEY'][0]} valid?", "I cannot check keys.", None),
        (
            "how do I reach support?",
            "see the passage [1]",
            [
                {
                    "text": f"Support: {p['PHONE_NUMBER'][1]}, Slack bot {p['SLACK_TOKEN'][0]}",
                    "label": "a.pdf",
                }
            ],
        ),
        (f"my password: {p['SECRET_VALUE'][0]} is rejected", "reset it.", None),
        (
            "what is bigbertha ?",
            "an llmops platform.",
            [{"text": "BigBertha is an LLMOps platform."}],
        ),
    ]
    records = [
        {
            "ts": n,
            "question": q,
            "answer": a,
            "sources": [],
            "model_version": "1",
            "context": ctx,
            "rating": "up",
            "turn_id": f"pii-{n}",
        }
        for n, (q, a, ctx) in enumerate(turns)
    ]
    return curated, records


def test_planted_personal_data_and_secrets_never_reach_the_training_file(
    redis_server: Any, mlflow_server: Any, tmp_path: Path, clean_env: Path
) -> None:
    import redis
    from mlflow import MlflowClient

    curated, records = planted_rows()
    client = redis.Redis.from_url(redis_server.extra["url"])
    client.delete(FEEDBACK_KEY)
    for record in records:
        client.lpush(FEEDBACK_KEY, json.dumps(record))
    src = write(tmp_path / "curated.jsonl", [json.dumps(r) for r in curated])
    settings = Settings(
        redis={"url": redis_server.extra["url"], "timeout_seconds": 2},
        mlflow={"tracking_uri": mlflow_server.url},
        finetune={"min_examples": 1, "feedback_examples": 100, "eval_share": 0},
    )
    everything = [v for values in PLANTED.values() for v in values]

    def leaked(path: Path) -> list[str]:
        text = path.read_text()
        squashed = "".join(text.split()).replace("-", "")
        return [
            v for v in everything if v in text or "".join(v.split()).replace("-", "") in squashed
        ]

    # redact (the default): every row is kept, every planted value replaced by its type.
    manifest = training_data.prepare(settings, [src], str(tmp_path / "train.jsonl"))
    assert leaked(tmp_path / "train.jsonl") == []
    card = manifest["data_card"]
    assert card["rows"] == {"read": 12, "kept": 12}
    assert set(card["redactions"]) == set(PLANTED)
    assert card["rows_redacted"] == 10
    for entity in PLANTED:
        assert f"<{entity}>" in (tmp_path / "train.jsonl").read_text()
    assert card["limits"]["token_counter"] == "tokenizer of smollm2"
    assert json.loads((tmp_path / "train.manifest.json").read_text())["data_card"] == card
    [run] = MlflowClient(mlflow_server.url).search_runs(
        [MlflowClient(mlflow_server.url).get_experiment_by_name("bigbertha-retrain").experiment_id],
        filter_string=f"tags.dataset_hash = '{manifest['dataset_hash']}'",
    )
    assert run.data.metrics["data.redacted.EMAIL_ADDRESS"] == 2
    assert run.data.metrics["data.rows_kept"] == 12

    # drop: rows with any finding are left out.
    dropping = settings.model_copy(
        update={"finetune": settings.finetune.model_copy(update={"pii": "drop"})}
    )
    rows = functools.partial(_training_rows, redis_server.extra["url"])
    before = {outcome: rows(outcome) for outcome in ("kept", "personal_data")}
    manifest = training_data.prepare(dropping, [src], str(tmp_path / "dropped.jsonl"))
    assert leaked(tmp_path / "dropped.jsonl") == []
    assert manifest["data_card"]["rows"] == {"read": 12, "kept": 2}
    assert manifest["data_card"]["dropped"]["personal_data"] == 10
    # ... and counted for the dashboard's "Training rows" panel.
    assert rows("kept") == before["kept"] + 2
    assert rows("personal_data") == before["personal_data"] + 10


def _training_rows(url: str, outcome: str) -> int:
    import redis

    from bigbertha.telemetry.recorder import METRICS_KEY, field

    value = redis.Redis.from_url(url).hget(
        METRICS_KEY, field("bigbertha_training_rows_total", outcome)
    )
    return int(value or 0)


def test_rows_over_the_token_limit_and_near_duplicates_are_left_out(tmp_path: Path) -> None:
    long_answer = " ".join(["llamas eat hay"] * 400)
    passages = ["The sky is blue on a clear day.", "Grass is green."]
    rows = [
        {"prompt": "what color is the sky ?", "completion": "the sky is blue"},
        {"prompt": "What color is the sky??", "completion": "The sky is blue."},  # near
        {"prompt": "what colour is the sky ?", "completion": "the sky is blue"},  # near
        {"prompt": "what color is the grass ?", "completion": "the grass is green"},  # kept
        {"question": "why is it blue ?", "context": passages, "answer": "scattering [1]"},
        {"question": "why is it blue ?", "context": passages[:1], "answer": "scattering [1]"},
        {"question": "is grass blue ?", "context": passages, "answer": "no, green [2]"},  # kept
        {"prompt": "tell me about llamas", "completion": long_answer},  # too long
        {"prompt": "\u0000" * 5_000_000, "completion": "x"},  # too long, never tokenised
        {"prompt": "what color is the sky ?", "completion": "the sky is blue"},  # exact
    ]
    src = write(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])
    for base_model, counter in [
        ("smollm2", "tokenizer of smollm2"),
        (str(tmp_path / "gone"), "approximate"),
    ]:
        settings = settings_for(max_seq_length=256, base_model=base_model)
        dataset = training_data.build(settings, [src])
        card = dataset.card()
        assert card["limits"]["token_counter"].startswith(counter)
        assert card["rows"] == {"read": 10, "kept": 4}
        assert card["dropped"] == {
            "malformed": 0,
            "foreign_prompt": 0,
            "duplicate": 1,
            "too_long": 2,
            "personal_data": 0,
            "near_duplicate": 3,
            "contributor_cap": 0,
        }
        questions = [
            e["prompt"][-1]["content"].rsplit("Question: ", 1)[-1] for e in dataset.examples
        ]
        assert questions == [
            "what color is the sky ?",
            "what color is the grass ?",
            "why is it blue ?\nAnswer with citations:",
            "is grass blue ?\nAnswer with citations:",
        ]


# --- the file of record, prompts the chatbot never sends, held-out conversations -------------


def test_finetune_reads_the_file_as_written_and_refuses_one_changed_since(tmp_path: Path) -> None:
    settings = settings_for(min_examples=2)
    dataset = training_data.build(settings, [write(tmp_path / "c.jsonl", map(json.dumps, ROWS))])
    train = tmp_path / "train.jsonl"
    train.write_bytes(dataset.to_jsonl())
    manifest = {"dataset_hash": dataset.hash}
    (tmp_path / "train.manifest.json").write_text(json.dumps(manifest))
    loaded = training_data.load(settings, str(train))
    assert (loaded.examples, loaded.hash) == (dataset.examples, dataset.hash)
    # One row appended after prepare-data (a rebuild, a turn rated since): refused, not trained.
    with train.open("a") as f:
        f.write(json.dumps(training_data.to_example(ROWS[0]) | {"x": 1}) + "\n")
    with pytest.raises(InputError, match=r"is not its manifest's .* run prepare-data again"):
        training_data.load(settings, str(train))
    # A file that is not prepare-data's output names its first bad row.
    bad = write(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "{oops"])
    with pytest.raises(InputError, match=r"1 rows are not training examples .*bad.jsonl:2"):
        training_data.load(settings, bad)
    with pytest.raises(training_data.DatasetTooSmall, match="1 examples, need at least 2"):
        training_data.load(settings, write(tmp_path / "one.jsonl", [json.dumps(ROWS[0])]))


def test_rows_with_prompts_the_chatbot_never_sends_are_counted_or_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = training_data.to_example(ROWS[1])
    curated = write(tmp_path / "curated.jsonl", [json.dumps(r) for r in ROWS])
    # A prepare-data output holds the builder's prompts only: nothing foreign in it.
    prepared = write(tmp_path / "prepared.jsonl", [json.dumps(served)])
    dataset = training_data.build(settings_for(), [curated, prepared])
    assert dataset.card()["foreign_prompts"] == {curated: 2}
    assert len(dataset.examples) == 3
    assert f"{curated}: 2 of 3 rows use a prompt the chatbot does not send" in caplog.text

    strict = training_data.build(settings_for(served_prompts_only=True), [curated, prepared])
    assert strict.examples == [served]
    card = strict.card()
    assert card["foreign_prompts"] == {curated: 2} and card["dropped"]["foreign_prompt"] == 2
    assert card["rows"] == {"read": 4, "kept": 1}  # the served row twice: one exact duplicate
    # The no-context prompt (retrieval down) is one the chatbot sends too.
    assert training_data.served_prompt(build_messages("q", None))
    assert not training_data.served_prompt([{"role": "user", "content": "q"}])


def test_up_rated_turns_split_by_conversation_into_training_and_evaluation(
    redis_server: Any, tmp_path: Path
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.extra["url"])
    client.delete(FEEDBACK_KEY)
    passage = [{"text": "BigBertha is an LLMOps platform.", "label": "readme.md"}]
    for n in range(40):  # 20 conversations of 2 up-rated turns; one down-rated turn each
        for turn, rating in ((f"t{n}-a", "up"), (f"t{n}-b", "up"), (f"t{n}-c", "down")):
            record = {
                "ts": n,
                "question": f"question {turn} ?",
                "answer": f"answer {turn} [1]",
                "sources": [],
                "model_version": "1",
                "context": passage,
                "rating": rating,
                "turn_id": turn,
                "conversation": f"c{n // 2}",
            }
            client.lpush(FEEDBACK_KEY, json.dumps(record))
    settings = Settings(
        redis={"url": redis_server.extra["url"], "timeout_seconds": 2},
        # The turns differ in one token: near-duplicate removal would take most of them away.
        finetune={
            "min_examples": 1,
            "feedback_examples": 100,
            "eval_share": 0.3,
            "near_duplicate_threshold": 1.0,
        },
    )
    dataset = training_data.build(settings, [])
    rows = dataset.evaluation
    held = {r["conversation"] for r in rows}
    assert 0 < len(held) < 20
    trained = {question_of(e["prompt"]) for e in dataset.examples}
    evaluated = {r["question"] for r in rows}
    for n in range(40):
        conversation = f"c{n // 2}"
        for turn in (f"t{n}-a", f"t{n}-b"):  # both turns on their conversation's side only
            side = evaluated if training_data.held_out(conversation, 0.3) else trained
            assert f"question {turn} ?" in side
    assert not trained & evaluated and len(trained) + len(evaluated) == 80
    assert all(r.keys() == EVAL_KEYS for r in rows)
    row = rows[0]
    assert row["id"].startswith("feedback-t") and row["conversation"] in held
    assert (row["kind"], row["answerable"], row["gold"]) == ("feedback", True, [])
    assert row["reference"] == row["question"].replace("question", "answer").replace("?", "[1]")
    assert dataset.card()["held_out_for_evaluation"] == len(rows)


def test_the_demo_training_set_is_prompted_as_the_chatbot_prompts() -> None:
    """The demo's curated rows teach what the chatbot is asked: labelled passages in, a short
    complete answer citing one of them out (not a copy of a passage header), and enough rows
    survive the demo's own limits for its 8 steps of 4."""
    import re

    import yaml

    from bigbertha.local.platform import DEMO_DATA

    root = Path(__file__).resolve().parents[2]
    demo = yaml.safe_load((root / "values/demo.yaml").read_text())["settings"]["finetune"]
    settings = settings_for(
        **{k: demo[k] for k in ("max_seq_length", "min_examples")}, base_model="smollm2"
    )
    uri = str(DEMO_DATA / "train.jsonl")
    dataset = training_data.build(settings, [uri])
    assert len(dataset.examples) >= demo["max_steps"] * demo["batch_size"]
    assert dataset.card()["dropped"]["too_long"] == 0 and not dataset.foreign_prompts
    rows = [json.loads(line) for line in Path(uri).read_text().splitlines() if line[:1] == "{"]
    abstentions = 0
    for row, example in zip(rows, dataset.examples, strict=True):
        answer = row["answer"]
        assert training_data.served_prompt(example["prompt"]), row["question"]
        assert all(p["label"] for p in row["context"]), row["question"]  # cited as served
        assert answer.endswith("."), answer  # a complete sentence
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer)]
        assert all(1 <= n <= len(row["context"]) for n in cited), answer
        assert not any(p["label"] in answer for p in row["context"]), answer
        abstentions += not cited and answer == "The documents do not say."
        assert cited or answer == "The documents do not say.", answer
    assert abstentions >= 4


def test_up_rated_answers_cut_at_the_token_limit_train_on_their_complete_sentences() -> None:
    def turn(answer: str) -> dict[str, Any]:
        return {"question": "how do I roll back?", "answer": answer, "context": None}

    cut = turn("Run bigbertha promote --rollback [1]. It moves the champion alias back to")
    assert training_data.turn_example(cut)["completion"][0]["content"] == (
        "Run bigbertha promote --rollback [1]."
    )
    whole = "It moves the alias back [1]"  # ends with its citation: complete
    assert training_data.turn_example(turn(whole))["completion"][0]["content"] == whole
    with pytest.raises(ValueError, match="cut off before its first sentence ended"):
        training_data.turn_example(turn("The champion alias is moved back by"))


def test_one_contributor_flooding_the_log_keeps_at_most_the_cap_of_their_rows(
    redis_server: Any,
) -> None:
    """One person up-rating 100 answers against three who rated 2 each: the training set keeps
    the cap of the flooder's (their newest) and every other person's, and says so."""
    import redis

    client = redis.Redis.from_url(redis_server.extra["url"])
    client.delete(FEEDBACK_KEY)
    passage = [{"text": "BigBertha is an LLMOps platform.", "label": "readme.md"}]
    people = [("flooder", 100), ("ann", 2), ("bob", 2), ("eve", 2)]
    ts = 0
    for person, turns in people:
        for n in range(turns):
            ts += 1
            record = {
                "ts": ts,
                "question": f"question {person} {n} ?",
                "answer": f"answer {person} {n} [1]",
                "sources": [],
                "model_version": "1",
                "context": passage,
                "rating": "up",
                "turn_id": f"{person}-{n}",
                "conversation": f"{person}-{n}",
                "contributor": person,
            }
            client.lpush(FEEDBACK_KEY, json.dumps(record))
    # Turns logged before people were (no contributor) are not capped.
    legacy = {k: v for k, v in record.items() if k != "contributor"}
    for n in range(7):
        question = {"question": f"question legacy {n} ?", "turn_id": f"legacy-{n}"}
        client.lpush(FEEDBACK_KEY, json.dumps({**legacy, **question, "conversation": f"l{n}"}))
    settings = Settings(
        redis={"url": redis_server.extra["url"], "timeout_seconds": 2},
        finetune={
            "min_examples": 1,
            "feedback_examples": 1000,
            "eval_share": 0,
            "near_duplicate_threshold": 1.0,
            "max_rows_per_contributor": 5,
        },
    )
    dataset = training_data.build(settings, [])
    by_person: dict[str, list[int]] = {}
    for example in dataset.examples:
        _, person, n, _ = question_of(example["prompt"]).split(" ")
        by_person.setdefault(person, []).append(int(n))
    # The flooder's newest 5, everyone else's all, and every unattributed turn.
    assert sorted(by_person.pop("flooder")) == [95, 96, 97, 98, 99]
    assert {p: sorted(n) for p, n in by_person.items()} == {
        "ann": [0, 1],
        "bob": [0, 1],
        "eve": [0, 1],
        "legacy": list(range(7)),
    }
    card = dataset.card()
    assert card["dropped"]["contributor_cap"] == 95 and card["contributors"] == 4
    assert card["rows"]["read"] == card["rows"]["kept"] + sum(card["dropped"].values())
