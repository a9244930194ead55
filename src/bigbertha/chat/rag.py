"""The RAG core that `bigbertha ask` and the Streamlit chatbot share.

One answer, top to bottom (`RagEngine.stream`):
1. retrieve the top-k chunks for the question (Milvus down: answer without context, warn);
2. build the prompt (`models.prompts`): numbered passages and an instruction to cite them;
3. generate with the model the router picks for the conversation at this moment: the champion,
   or during a canary the challenger for its share of conversations (chat/routing.py); streamed,
   it stays that model for the whole answer, even if the champion is swapped meanwhile;
4. record telemetry (Recorder) and log the turn (FeedbackLog).

Nothing retrieved: the answer says so without asking the model (it would only guess) and the
empty-retrieval metric counts it. An LLM failure becomes a clear message in the answer and an
error in the metrics, never a traceback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

from bigbertha.chat import identity
from bigbertha.chat.limits import AnswerQueue, check_question
from bigbertha.chat.llm import GenerationError, TokenStream
from bigbertha.chat.model_server import ModelServer
from bigbertha.chat.routing import ModelRouter, new_conversation
from bigbertha.core.errors import InputError
from bigbertha.core.settings import Settings
from bigbertha.documents.retrieval import Chunk, RetrievalUnavailable, Retrieved, Retriever
from bigbertha.models import registry
from bigbertha.models.prompts import build_messages, passages_of
from bigbertha.telemetry.feedback import FeedbackLog, FeedbackSource, Turn

log = logging.getLogger(__name__)

NOTHING_RETRIEVED = (
    "I found nothing in the ingested documents that matches this question, so I cannot answer "
    "it from them. Try rephrasing it, or ingest the documents that cover it."
)

Warning = Literal["retrieval_unavailable", "telemetry_unavailable", "feedback_unavailable"]


@dataclass(frozen=True)
class Source:
    """A source shown under an answer: document, page or section, and its score."""

    n: int
    document: str
    file_name: str
    page: int | None
    section: str | None
    score: float
    snippet: str

    @property
    def label(self) -> str:
        where = [self.file_name]
        if self.page is not None:
            where.append(f"page {self.page}")
        if self.section:
            where.append(f"section {self.section}")
        return ", ".join(where)


@dataclass
class Timings:
    """Seconds spent in each stage of one answer."""

    retrieval: float = 0.0
    prompt: float = 0.0
    generation: float = 0.0
    telemetry: float = 0.0
    ttft: float | None = None
    total: float = 0.0


@dataclass
class Answer:
    """A finished answer and everything the UI, the CLI and the feedback log need from it."""

    question: str
    text: str
    sources: list[Source]
    model_version: str
    turn: Turn
    timings: Timings
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    warnings: dict[str, str] = field(default_factory=dict)
    conversation: str = ""

    @property
    def turn_id(self) -> str:
        return self.turn.turn_id

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        """The answer `to_dict()` described (e.g. one from the chatbot's /api/ask)."""
        sources = [Source(**{k: v for k, v in s.items() if k != "label"}) for s in data["sources"]]
        turn = Turn(
            question=data["question"],
            answer=data["answer"],
            sources=[FeedbackSource(s.document, s.page, s.score) for s in sources],
            model_version=data["model_version"],
            turn_id=data["turn_id"],
        )
        return cls(
            question=data["question"],
            text=data["answer"],
            sources=sources,
            model_version=data["model_version"],
            turn=turn,
            timings=Timings(**data["timings"]),
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            error=data["error"],
            warnings=data["warnings"],
            conversation=data.get("conversation") or "",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "sources": [asdict(s) | {"label": s.label} for s in self.sources],
            "model_version": self.model_version,
            "turn_id": self.turn_id,
            "timings": asdict(self.timings),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
            "warnings": self.warnings,
            "conversation": self.conversation,
        }


def sources_from(chunks: Sequence[Chunk], snippet_chars: int = 240) -> list[Source]:
    """Sources numbered as the prompt numbers them ([1] is the best chunk)."""
    out = []
    for n, chunk in enumerate(chunks, start=1):
        snippet = " ".join(chunk.text.split())
        if len(snippet) > snippet_chars:
            snippet = snippet[: snippet_chars - 1].rstrip() + "…"
        out.append(
            Source(
                n=n,
                document=chunk.source,
                file_name=chunk.file_name,
                page=chunk.page,
                section=chunk.section,
                score=round(chunk.score, 4),
                snippet=snippet,
            )
        )
    return out


@dataclass
class _Draft:
    """One answer while it is produced: what `RagEngine._finish` records when it ends."""

    question: str
    started: float
    conversation: str = ""
    contributor: str = ""
    timings: Timings = field(default_factory=Timings)
    chunks: list[Chunk] | None = None  # None: retrieval was unavailable
    sources: list[Source] = field(default_factory=list)
    version: str = ""
    parts: list[str] = field(default_factory=list)
    tokens: TokenStream | None = None
    error: str | None = None


class AnswerStream:
    """Iterate for the answer's text deltas; `answer` is set once iteration has finished.

    Closing it early (a user who left) stops generation at the next token and still records
    the partial answer. `abandon()` (an API client hung up) stops it at the next stage or
    token, from any thread, and records nothing: no turn is logged, `answer` stays None.
    """

    def __init__(
        self, engine: RagEngine, question: str, conversation: str, contributor: str = ""
    ) -> None:
        self._engine = engine
        self.question = question
        self.conversation = conversation
        self.contributor = contributor
        self.answer: Answer | None = None
        self.warnings: dict[str, str] = {}
        self.gone = threading.Event()
        self._iterator = engine._run(question, self)

    def abandon(self) -> None:
        """Nobody will read this answer: stop generating it and never log it (thread-safe)."""
        self.gone.set()

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def close(self) -> None:
        self._iterator.close()

    def result(self) -> Answer:
        """Consume what is left and return the finished answer."""
        for _ in self._iterator:
            pass
        assert self.answer is not None
        return self.answer


class RagEngine:
    """Retriever + models + telemetry + feedback log: one per process, thread-safe.

    `models` is the champion's server (its status is what the UI and /api/status show);
    `router` picks the model per conversation (default: the champion for every one).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        retriever: Retriever,
        models: ModelServer,
        recorder: Any,
        feedback: FeedbackLog,
        router: ModelRouter | None = None,
    ) -> None:
        self.settings = settings
        self.retriever = retriever
        self.models = models
        self.router = router or ModelRouter(models)
        self.recorder = recorder
        self.feedback = feedback
        self._slots = threading.BoundedSemaphore(settings.chat.max_concurrent_answers)
        # Admission for the API and UI: generating plus waiting answers stay bounded.
        self.queue = AnswerQueue(
            settings.chat.max_concurrent_answers,
            settings.chat.max_queued_answers,
            settings.chat.max_answers_per_client,
        )
        # Who asks and votes: pseudonyms, and the per-person limits shared through Redis.
        self.identity_key = identity.identity_key(settings)
        self.people = identity.PersonLimits.from_settings(settings, feedback.client)

    @classmethod
    def from_settings(cls, settings: Settings, *, watch: bool = True) -> RagEngine:
        """Load the model once (champion if the registry has one) and connect everything."""
        from bigbertha.telemetry.recorder import Recorder

        limit_registry_retries()
        recorder = Recorder.from_settings(settings)
        router = ModelRouter.from_settings(settings)
        # The exporter's model_info shows a swapped-in model at once, not at its first answer.
        for server in (router.champion, router.challenger):
            if server is not None:
                server.on_swap = lambda model: recorder.set_serving_model(model.version)
        router.start(watch=watch)
        if (canary := router.canary()) is not None:
            recorder.set_serving_model(canary.version)
        recorder.set_serving_model(router.champion.current().version)  # the newest mark
        return cls(
            settings,
            retriever=Retriever(settings),
            models=router.champion,
            recorder=recorder,
            feedback=FeedbackLog.from_settings(settings),
            router=router,
        )

    def stop(self) -> None:
        """Stop watching the registry (both servers)."""
        self.router.stop()

    def person(self, subject: str) -> str:
        """The pseudonym of `subject` (a sign-on's subject, a session, an API client)."""
        return identity.pseudonym(subject, self.identity_key)

    def stream(
        self, question: str, conversation: str | None = None, person: str | None = None
    ) -> AnswerStream:
        """Answer `question` as it is generated, as a turn of `conversation` (None: a new
        one-turn conversation) asked by `person` (a pseudonym: `person()`); `limits.Refused` for
        a question out of bounds, `identity.PersonLimited` for a person over their limit."""
        question = check_question(question, self.settings.chat.max_question_chars)
        if person:
            self.people.admit(person, "question")
        return AnswerStream(self, question, conversation or new_conversation(), person or "")

    def ask(
        self,
        question: str,
        rating: Literal["up", "down"] | str | None = None,
        conversation: str | None = None,
    ) -> Answer:
        """Answer `question`; rate it `rating` unless the model failed (`bigbertha ask`)."""
        answer = self.stream(question, conversation).result()
        if rating in ("up", "down") and not answer.error:
            self.rate(answer, "up" if rating == "up" else "down")
        return answer

    def rate(
        self, answer: Answer, rating: Literal["up", "down"], person: str | None = None
    ) -> bool:
        """Record `person`'s thumbs up/down for the model version that produced `answer`
        (`identity.PersonLimited` when they cast their votes of the hour already).

        Returns False when it could not be stored (Redis down: the UI says so).
        """
        if person:
            self.people.admit(person, "vote")
        dropped = self.recorder.dropped
        # One vote per answer: rating it again replaces the vote (the log's newest record wins).
        self.recorder.record_feedback(
            answer.model_version, rating, answer.turn.turn_id, person or answer.turn.contributor
        )
        logged = self.feedback.rate(answer.turn, rating)
        return logged and self.recorder.dropped == dropped

    def warm_up(self) -> None:
        """Open the vector store and load the embedding model now, not on the first question."""
        try:
            self.retriever.retrieve("warm-up")
        except RetrievalUnavailable as exc:
            log.warning("document search unavailable at start: %s", exc)

    def _run(self, question: str, out: AnswerStream) -> Generator[str, None, None]:
        settings = self.settings
        draft = _Draft(
            question,
            started=time.perf_counter(),
            conversation=out.conversation,
            contributor=out.contributor,
        )
        timings = draft.timings

        # 1. Retrieve (not even that for a client that hung up while queued).
        if out.gone.is_set():
            return
        try:
            draft.chunks = self.retriever.retrieve(question)
        except RetrievalUnavailable as exc:
            log.warning("answering without context: %s", exc)
            out.warnings["retrieval_unavailable"] = (
                f"Document search is unavailable ({exc}); this answer is not based on "
                "your documents."
            )
        timings.retrieval = time.perf_counter() - draft.started

        # 2. Build the prompt.
        mark = time.perf_counter()
        passages = None if draft.chunks is None else passages_of(draft.chunks)
        messages = build_messages(question, passages) if passages != [] else []
        draft.sources = sources_from(draft.chunks or [])
        timings.prompt = time.perf_counter() - mark

        # 3. Generate, holding on to this conversation's model for the whole answer.
        model = self.router.model_for(out.conversation)
        draft.version = model.version
        error_text = ""
        mark = time.perf_counter()
        if not messages:
            draft.parts.append(NOTHING_RETRIEVED)
            timings.ttft = time.perf_counter() - draft.started
            timings.generation = time.perf_counter() - mark
            self._finish(out, draft)
            yield NOTHING_RETRIEVED
            return
        with self._slots:
            if out.gone.is_set():  # hung up while waiting for a generation slot
                return
            finished = False
            try:
                draft.tokens = model.stream(
                    messages,
                    max_new_tokens=settings.llm.max_new_tokens,
                    temperature=settings.llm.temperature,
                )
                for delta in draft.tokens:
                    if out.gone.is_set():
                        break
                    if timings.ttft is None:
                        timings.ttft = time.perf_counter() - draft.started
                    draft.parts.append(delta)
                    yield delta
                finished = True
            except GenerationError as exc:
                draft.error = str(exc)
            except Exception as exc:  # a backend bug must not kill the chat session
                log.exception("generation failed")
                draft.error = f"generation failed: {type(exc).__name__}: {exc}"
            finally:
                # Also runs when the reader went away (GeneratorExit): record what was produced.
                if draft.tokens is not None:
                    draft.tokens.close()
                timings.generation = time.perf_counter() - mark
                if finished and not "".join(draft.parts).strip():
                    draft.error = "the model returned an empty answer"
                if draft.error is not None:
                    error_text = ("\n\n" if draft.parts else "") + (
                        f"The language model could not answer ({draft.error}). Please try "
                        "again; if it keeps failing, tell the operators."
                    )
                    draft.parts.append(error_text)
                if not out.gone.is_set():
                    self._finish(out, draft)
        if error_text:
            yield error_text

    def _finish(self, out: AnswerStream, draft: _Draft) -> None:
        """Record the finished answer (telemetry, feedback log) and set `out.answer`."""
        text = "".join(draft.parts).strip()
        tokens, timings, chunks = draft.tokens, draft.timings, draft.chunks
        prompt_tokens = tokens.prompt_tokens if tokens is not None else 0
        completion_tokens = tokens.completion_tokens if tokens is not None else 0
        timings.total = time.perf_counter() - draft.started
        mark = time.perf_counter()
        turn = Turn(
            question=draft.question,
            answer=text,
            sources=[FeedbackSource(s.document, s.page, s.score) for s in draft.sources],
            model_version=draft.version,
            # What the model was prompted with, so a rated turn trains on this exact prompt.
            context=None if chunks is None else [p.to_record() for p in passages_of(chunks)],
            conversation=draft.conversation,
            contributor=draft.contributor,
        )
        dropped = self.recorder.dropped
        self.recorder.record_answer(
            draft.version,
            latency_s=timings.total,
            ttft_s=timings.ttft,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            # Dense cosines in every retrieval mode (Retrieved.relevance), never fused ranks.
            scores=chunks.relevance
            if isinstance(chunks, Retrieved)
            else [c.score for c in chunks or []],
            context_chunks=len(chunks or []),
            error=draft.error is not None,
        )
        if self.feedback.enabled and self.recorder.dropped != dropped:
            out.warnings["telemetry_unavailable"] = (
                "Metrics are not being recorded (Redis unreachable); the chat still works."
            )
        if self.feedback.enabled and not self.feedback.append(turn):
            out.warnings["feedback_unavailable"] = (
                "The feedback log is unavailable (Redis unreachable); ratings are not kept."
            )
        timings.telemetry = time.perf_counter() - mark
        out.answer = Answer(
            question=draft.question,
            text=text,
            sources=draft.sources,
            model_version=draft.version,
            turn=turn,
            timings=timings,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error=draft.error,
            warnings=out.warnings,
            conversation=draft.conversation,
        )


_SHARED: dict[str, RagEngine] = {}


def _plain(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


_SHARED_LOCK = threading.Lock()


def shared_engine(
    settings: Settings, build: Callable[[Settings], RagEngine] | None = None
) -> RagEngine:
    """The one engine (and model) of this process for `settings`, built on first use.

    Every chat session calls this; the first builds the engine (`build`, default
    `RagEngine.from_settings` plus a warm-up), the others wait for it and share it.
    """
    # Secrets count: two settings that differ only in redis.url are two engines.
    key = json.dumps(settings.model_dump(), sort_keys=True, default=_plain)
    with _SHARED_LOCK:
        engine = _SHARED.get(key)
        if engine is None:
            if build is None:
                engine = RagEngine.from_settings(settings)
                engine.warm_up()
            else:
                engine = build(settings)
            _SHARED[key] = engine
        return engine


def limit_registry_retries() -> None:
    """Fail fast on an unreachable MLflow: its client retries for minutes by default, but the
    chatbot polls again every chat.champion_poll_seconds and must start while MLflow is down."""
    registry.limit_retries()


def ask_once(
    settings: Settings,
    question: str,
    *,
    rating: Literal["up", "down"] | str | None = None,
    conversation: str | None = None,
) -> Answer:
    """`bigbertha ask`: load the serving model(s), answer one question, optionally rate it."""
    if not question.strip():
        raise InputError("question is empty: pass the question as the argument")
    check_question(question, settings.chat.max_question_chars)  # before loading any model
    engine = RagEngine.from_settings(settings, watch=False)
    try:
        answer = engine.ask(question, rating, conversation)
    finally:
        engine.stop()
    return answer


def render(answer: Answer) -> str:
    """The answer as plain text for a terminal: answer, warnings, sources, timings."""
    lines = [answer.text, ""]
    lines += [f"warning: {text}" for text in answer.warnings.values()]
    if answer.sources:
        lines.append("sources:")
        lines += [
            f"  [{s.n}] {s.label}  (score {s.score:.3f})  {s.document}" for s in answer.sources
        ]
    t = answer.timings
    ttft = f"{t.ttft:.2f}s" if t.ttft is not None else "-"
    lines.append(
        f"model {answer.model_version} | total {t.total:.2f}s (retrieval {t.retrieval:.3f}s, "
        f"prompt {t.prompt:.4f}s, generation {t.generation:.2f}s, telemetry {t.telemetry:.3f}s, "
        f"first token {ttft}) | tokens {answer.prompt_tokens}+{answer.completion_tokens}"
    )
    return "\n".join(lines)
