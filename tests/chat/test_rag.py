"""The RAG core end to end on real services: Milvus (ingested by `bigbertha ingest`'s code),
SmolLM2, Redis telemetry and feedback log, the MLflow registry for hot-swap; and each degraded
mode with the real service stopped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.rag import NOTHING_RETRIEVED, RagEngine, passages_of, sources_from
from bigbertha.core.settings import MlflowSettings, RedisSettings, Settings
from bigbertha.documents import ingest
from bigbertha.local.tiny_llama import tiny_llama
from bigbertha.models import registry
from bigbertha.models.loading import pyfunc_model
from bigbertha.models.prompts import build_messages
from bigbertha.telemetry.feedback import FeedbackLog
from tests.chat.helpers import HANDBOOK, MASCOT, chunk, engine_for, metric
from tests.models.helpers import make_adapter, tiny_corpus
from tests.services import Service, ServiceManager


def test_prompt_numbers_the_passages_and_asks_for_citations() -> None:
    chunks = [chunk("Refunds take 5 days.", 0.8, page=3), chunk("Gloria.", 0.5, section="Office")]
    system, user = build_messages("How long do refunds take?", passages_of(chunks))
    assert "[1]" in system["content"] and "only from the numbered context" in system["content"]
    assert "Passage 1: a.pdf, page 3\nRefunds take 5 days." in user["content"]
    assert "Passage 2: a.pdf, section Office\nGloria." in user["content"]
    assert user["content"].rstrip().endswith("Answer with citations:")
    sources = sources_from(chunks)
    assert [(s.n, s.label, s.score) for s in sources] == [
        (1, "a.pdf, page 3", 0.8),
        (2, "a.pdf, section Office", 0.5),
    ]
    # Retrieval unavailable: no passages, and the model is told the answer is not from the docs.
    system, user = build_messages("q?", None)
    assert "unavailable" in system["content"] and user["content"] == "q?"


@pytest.fixture(scope="module")
def milvus(services: ServiceManager) -> Service:
    """A Milvus of this module's own: the last test stops it."""
    return services.milvus()


@pytest.fixture(scope="module")
def kb(
    milvus: Service, redis_server: Service, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings for a collection holding the handbook, ingested as `bigbertha ingest` does."""
    docs = tmp_path_factory.mktemp("docs")
    (docs / "handbook.md").write_text(HANDBOOK)
    settings = Settings(
        milvus={"uri": milvus.extra["uri"], "collection": "rag_test"},
        redis={"url": redis_server.extra["url"], "timeout_seconds": 0.5},
        llm={"max_new_tokens": 32},
        chat={"champion_alias": "", "top_k": 3, "similarity_cutoff": 0.3},
    )
    report = ingest.run(settings, [str(docs / "handbook.md")])
    assert report.to_dict()["totals"]["ingested"] == 1
    return settings


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text, self.prompt_tokens, self.completion_tokens = text, 7, 3

    def __iter__(self) -> Iterator[str]:
        yield self.text

    def close(self) -> None:
        pass


class _RecordingModel:
    """Answers with a fixed text and keeps every prompt it was sent."""

    ref = version = "recording"

    def __init__(self) -> None:
        self.sent: list[list[dict[str, str]]] = []

    def stream(self, messages: Any, *, max_new_tokens: int, temperature: float) -> _Tokens:
        self.sent.append([dict(m) for m in messages])
        return _Tokens("The mascot is Gloria [1].")


def test_a_rated_turn_trains_on_exactly_the_prompt_the_chatbot_sent(kb: Settings) -> None:
    from bigbertha.telemetry.feedback import KEY
    from bigbertha.training import data as training_data

    model = _RecordingModel()
    engine = engine_for(kb, ModelServer(lambda ref: model, fallback_ref="recording").start())
    FeedbackLog.from_settings(kb).client.delete(KEY)
    answer = engine.ask(MASCOT, "up")
    assert answer.sources and not answer.error  # retrieved from Milvus, then generated

    # Every conversation on the training side (none held out for evaluation).
    training = kb.model_copy(update={"finetune": kb.finetune.model_copy(update={"eval_share": 0})})
    turns = training_data.feedback_examples(training, limit=10)
    [example] = turns.examples
    assert turns.unusable == 0 and turns.evaluation == []
    assert example["prompt"] == model.sent[0]
    assert example["completion"] == [{"role": "assistant", "content": answer.text}]


@pytest.mark.slow
def test_answer_cites_the_document_and_feedback_is_recorded(kb: Settings) -> None:
    engine = engine_for(kb)
    before = metric(kb, "bigbertha_chat_requests_total", "smollm2")
    stream = engine.stream(MASCOT)
    deltas = list(stream)
    answer = stream.result()
    assert len(deltas) > 1 and "".join(deltas).strip() == answer.text
    assert "Gloria" in answer.text and answer.error is None and not answer.warnings
    top = answer.sources[0]
    assert top.file_name == "handbook.md" and "Office" in (top.section or "")
    assert top.score >= 0.3 and top.document.endswith("handbook.md")
    assert answer.model_version == "smollm2" and 0 < answer.completion_tokens <= 32
    assert answer.timings.ttft is not None and answer.timings.generation > 0
    assert metric(kb, "bigbertha_chat_requests_total", "smollm2") == before + 1

    downs = metric(kb, "bigbertha_feedback_total", "smollm2", "down")
    assert engine.rate(answer, "down")
    assert metric(kb, "bigbertha_feedback_total", "smollm2", "down") == downs + 1
    rated, served = engine.feedback.read(limit=2)
    assert rated["turn_id"] == served["turn_id"] == answer.turn_id
    assert (served["rating"], rated["rating"]) == (None, "down")
    assert served["question"] == MASCOT and served["sources"][0]["source"] == top.document


@pytest.mark.slow
def test_ask_command_prints_json_and_records_the_rating(
    kb: Settings, monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    from bigbertha.chat import rag
    from bigbertha.cli import app

    built: list[RagEngine] = []

    def from_settings(settings: Settings, *, watch: bool = True) -> RagEngine:
        built.append(engine_for(settings))  # the session's SmolLM2 instead of a second load
        return built[-1]

    monkeypatch.setattr(rag.RagEngine, "from_settings", staticmethod(from_settings))
    env = {
        "BIGBERTHA_MILVUS__URI": kb.milvus.uri,
        "BIGBERTHA_MILVUS__COLLECTION": kb.milvus.collection,
        "BIGBERTHA_REDIS__URL": kb.redis.url.get_secret_value(),  # type: ignore[union-attr]
        "BIGBERTHA_LLM__MAX_NEW_TOKENS": "24",
        "BIGBERTHA_CHAT__CHAMPION_ALIAS": "",
    }
    ups = metric(kb, "bigbertha_feedback_total", "smollm2", "up")
    result = CliRunner().invoke(
        app, ["ask", "How long do refunds take?", "--json", "--feedback", "up"], env=env
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["model_version"] == "smollm2" and doc["answer"]
    assert doc["sources"][0]["label"].startswith("handbook.md, section")
    assert set(doc["timings"]) >= {"retrieval", "prompt", "generation", "telemetry", "ttft"}
    assert metric(kb, "bigbertha_feedback_total", "smollm2", "up") == ups + 1

    bad = CliRunner().invoke(app, ["ask", "q", "--feedback", "meh"], env=env)
    assert bad.exit_code == 2 and "--feedback 'meh'" in bad.output


@pytest.mark.slow
def test_nothing_retrieved_says_so_and_is_counted(kb: Settings) -> None:
    strict = kb.model_copy(update={"chat": kb.chat.model_copy(update={"similarity_cutoff": 0.95})})
    engine = engine_for(strict)
    empty = metric(kb, "bigbertha_retrieval_empty_total", "smollm2")
    answer = engine.ask("Which rocket engines power the Saturn V?")
    assert answer.text == NOTHING_RETRIEVED and answer.sources == []
    assert answer.completion_tokens == 0 and answer.error is None
    assert metric(kb, "bigbertha_retrieval_empty_total", "smollm2") == empty + 1


def test_llm_backend_error_is_a_message_and_an_error_metric(kb: Settings) -> None:
    from tests.services import free_port

    settings = kb.model_copy(
        update={
            "llm": kb.llm.model_copy(
                update={
                    "backend": "openai",
                    "model": "gone",
                    "api_base": f"http://127.0.0.1:{free_port()}/v1",
                }
            )
        }
    )
    engine = engine_for(settings, ModelServer.from_settings(settings).start())
    errors = metric(kb, "bigbertha_chat_errors_total", "gone")
    answer = engine.ask(MASCOT)
    assert answer.error and "LLM endpoint" in answer.error
    assert "The language model could not answer" in answer.text and "Traceback" not in answer.text
    assert answer.sources and answer.sources[0].file_name == "handbook.md"
    assert metric(kb, "bigbertha_chat_errors_total", "gone") == errors + 1


@pytest.mark.slow
def test_redis_down_chat_works_and_says_metrics_are_dropped(
    kb: Settings, services: ServiceManager
) -> None:
    redis = services.redis()
    settings = kb.model_copy(update={"redis": RedisSettings(url=redis.extra["url"])})
    engine = engine_for(settings)
    redis.stop()
    answer = engine.ask(MASCOT)
    assert "Gloria" in answer.text and answer.error is None
    assert set(answer.warnings) == {"telemetry_unavailable", "feedback_unavailable"}
    assert engine.recorder.dropped >= 1
    assert engine.rate(answer, "down") is False  # shown to the user as "not stored"


@pytest.fixture
def two_versions(services: ServiceManager, tmp_path: Path, kb: Settings) -> Iterator[Settings]:
    """A registry of its own (the test stops it) with version 1 as champion and version 2."""
    mlflow = services.mlflow()
    base = tiny_llama(tmp_path / "tiny", tiny_corpus(HANDBOOK))
    settings = kb.model_copy(
        update={
            "mlflow": MlflowSettings(
                tracking_uri=mlflow.url, model_name=f"chat-{uuid.uuid4().hex[:8]}"
            ),
            "chat": kb.chat.model_copy(update={"champion_alias": "champion"}),
            "llm": kb.llm.model_copy(update={"model": str(base), "max_new_tokens": 4}),
        }
    )
    for seed in (1, 2):
        adapter = tmp_path / f"v{seed}" / "adapter"  # the directory name finetune saves under
        make_adapter(base, adapter, seed=seed)
        registry.register_challenger(settings, adapter, {"base_model": str(base)}, pyfunc_model())
    registry.promote(settings, "1")
    yield settings
    mlflow.stop()


@pytest.mark.slow
def test_champion_hot_swap_then_registry_down(
    two_versions: Settings, services: ServiceManager, clean_env: Path
) -> None:
    from bigbertha.chat.rag import limit_registry_retries

    limit_registry_retries()  # as the chatbot does: an unreachable MLflow fails fast
    settings = two_versions
    server = ModelServer.from_settings(settings).start(watch=False)
    engine = engine_for(settings, server)
    assert engine.ask(MASCOT).model_version == "1"

    registry.promote(settings, "2")  # the promotion gate moves the alias
    assert server.check_now() is True
    assert engine.ask(MASCOT).model_version == "2"  # no restart

    # Registry down: keep serving version 2, visibly.
    mlflow_url = settings.mlflow.tracking_uri
    for service in services.started:
        if service.url == mlflow_url:
            service.stop()
    assert server.check_now() is False
    status = server.status()
    assert not status.registry_ok and status.registry_failures == 1
    assert engine.ask(MASCOT).model_version == "2"


@pytest.mark.slow
def test_milvus_down_answers_without_context_and_warns(kb: Settings, milvus: Service) -> None:
    engine = engine_for(kb)
    empty = metric(kb, "bigbertha_retrieval_empty_total", "smollm2")
    milvus.stop()
    answer = engine.ask(MASCOT)
    assert answer.error is None and answer.text and answer.sources == []
    assert "Document search is unavailable" in answer.warnings["retrieval_unavailable"]
    assert metric(kb, "bigbertha_retrieval_empty_total", "smollm2") == empty + 1


def test_one_engine_per_process_for_the_same_settings() -> None:
    from bigbertha.chat import rag

    built: list[Settings] = []

    def build(settings: Settings) -> Any:
        built.append(settings)
        return object()

    a = Settings(redis={"url": "redis://a:6379/0"}, chat={"top_k": 7})
    b = Settings(redis={"url": "redis://b:6379/0"}, chat={"top_k": 7})
    first = rag.shared_engine(a, build=build)
    assert (
        rag.shared_engine(Settings(redis={"url": "redis://a:6379/0"}, chat={"top_k": 7})) is first
    )
    assert rag.shared_engine(b, build=build) is not first  # differs only in a secret
    assert len(built) == 2
