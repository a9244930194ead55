"""The bounded feedback log: every chat turn and every rating, kept in Redis for retraining.

Each turn is LPUSHed to the list `bigbertha:feedback:log` as one JSON object
`{"ts", "question", "answer", "sources": [{"source", "page", "score"}], "model_version",
"context": [{"text", "label"}] | null, "rating", "turn_id", "conversation", "contributor"}` with
`rating` null
(`context` holds the passages the model was prompted with, so training rebuilds that exact
prompt; `conversation` lets training hold whole conversations out for evaluation); a thumbs up
or down appends a second, complete record with the same `turn_id` and the rating, so a reader
never needs to join records. The list is
trimmed to `chat.feedback_log_size` items on every write (LTRIM), so it stays bounded.

The log never breaks a chat: with Redis unset or unreachable a write returns False, logs once
per outage, and the caller shows the user that feedback is not being kept.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

KEY = "bigbertha:feedback:log"
Rating = Literal["up", "down"]


@dataclass(frozen=True)
class FeedbackSource:
    """Where a retrieved chunk came from, as the feedback log keeps it."""

    source: str
    page: int | str | None
    score: float


@dataclass(frozen=True)
class Turn:
    """One question and its answer, as served (rating None until the user rates it)."""

    question: str
    answer: str
    sources: Sequence[FeedbackSource]
    model_version: str
    # The passages the model was prompted with ({"text", "label"} each): None when retrieval
    # was unavailable (prompted without context), empty when the model was not asked at all.
    context: Sequence[Mapping[str, Any]] | None = ()
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = field(default_factory=time.time)
    rating: Rating | None = None
    # The conversation it belongs to: training holds a share of conversations out, whole.
    conversation: str = ""
    # Who asked: their pseudonym (chat.identity), never a name; training caps rows per person.
    contributor: str = ""

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data["sources"] = [asdict(s) for s in self.sources]
        data["context"] = None if self.context is None else [dict(p) for p in self.context]
        return data


class FeedbackLog:
    """append/rate/read over a Redis list; `client=None` means feedback storage is off."""

    def __init__(self, client: Any | None, *, size: int = 10_000, key: str = KEY) -> None:
        self.client = client
        self.size = size
        self.key = key
        self._down = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackLog:
        if settings.redis.url is None:
            return cls(None, size=settings.chat.feedback_log_size)
        from bigbertha.telemetry.recorder import redis_client

        client = redis_client(settings.redis.url.get_secret_value(), settings.redis.timeout_seconds)
        return cls(client, size=settings.chat.feedback_log_size)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def available(self) -> bool:
        """False when storage is off or the last write failed (shown to the user)."""
        return self.client is not None and not self._down

    def append(self, turn: Turn) -> bool:
        """Log a served turn; False if it could not be stored."""
        return self._push(turn.record())

    def rate(self, turn: Turn, rating: Rating) -> bool:
        """Log the user's rating of a turn as a second, complete record with the same turn_id."""
        if rating not in ("up", "down"):
            raise ValueError(f"rating {rating!r}: must be 'up' or 'down'")
        record = turn.record() | {"rating": rating, "ts": time.time()}
        return self._push(record)

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest records first (at most `limit`); [] when storage is unavailable."""
        if self.client is None:
            return []
        end = -1 if limit is None else limit - 1
        try:
            raw = self.client.lrange(self.key, 0, end)
        except Exception as exc:  # redis errors of every kind: reading is best effort
            self._mark_down(exc)
            return []
        self._mark_up()
        records = []
        for item in raw:
            try:
                records.append(json.loads(item))
            except ValueError:
                log.warning("feedback log: skipping a record that is not JSON")
        return records

    def _push(self, record: dict[str, Any]) -> bool:
        if self.client is None:
            return False
        payload = json.dumps(record, ensure_ascii=False, default=str)
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(self.key, payload)
            pipe.ltrim(self.key, 0, self.size - 1)
            pipe.execute()
        except Exception as exc:  # a chat must never fail because Redis did
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    def _mark_down(self, exc: Exception) -> None:
        with self._lock:
            if not self._down:
                log.warning("feedback log: Redis unreachable, turns are not kept (%s)", exc)
            self._down = True

    def _mark_up(self) -> None:
        with self._lock:
            if self._down:
                log.info("feedback log: Redis reachable again")
            self._down = False
