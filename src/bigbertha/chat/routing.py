"""Which model answers a conversation: the champion, or during a canary the challenger.

A `ModelRouter` holds two `ModelServer`s: one following the registry's champion alias (falling
back to llm.model), one following the ``challenger`` alias without fallback, so it holds a model
only while a canary runs (`bigbertha.training.canary` removes the alias when it decides). A
conversation goes to the challenger iff its bucket, a stable hash of the conversation id salted
with the challenger's version and mapped onto [0, 1), is below `canary.share`. So:

- sticky: every turn of a conversation gets the same side, on every replica, with no shared
  state (the id is all it takes);
- measured: over many conversations the challenger's part converges on the share;
- fresh: each new challenger draws its own cohort, not the previous canary's users again.

With share 0 no challenger server exists (no second model in memory). Both backends work alike:
in process the challenger is a second model; on an inference tier it is a second adapter name.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass

from bigbertha.chat.llm import ChatModel
from bigbertha.chat.model_server import ModelServer
from bigbertha.core.settings import Settings
from bigbertha.models.registry import CHALLENGER

log = logging.getLogger(__name__)

_SCALE = float(2**64)


def bucket(conversation: str, salt: str = "") -> float:
    """A stable number in [0, 1) for a conversation id (the same on every process and run)."""
    digest = hashlib.sha256(f"{salt}\x00{conversation}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def new_conversation() -> str:
    """A fresh conversation id (the API returns it; the UI keeps one per session)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Canary:
    """The canary as this process serves it: the challenger's version and its share."""

    version: str
    ref: str
    share: float


class ModelRouter:
    """The champion's server and, during a canary, the challenger's; one per process."""

    def __init__(
        self, champion: ModelServer, challenger: ModelServer | None = None, share: float = 0.0
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"canary share {share!r}: must be within 0..1")
        self.champion = champion
        self.challenger = challenger
        self.share = share

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRouter:
        share = settings.canary.share
        champion = ModelServer.from_settings(settings)
        challenger = None
        if share > 0:
            challenger = ModelServer.from_settings(settings, alias=CHALLENGER, fallback=False)
        return cls(champion, challenger, share)

    def start(self, *, watch: bool = True) -> ModelRouter:
        self.champion.start(watch=watch)
        if self.challenger is not None:
            self.challenger.start(watch=watch)
        return self

    def stop(self) -> None:
        self.champion.stop()
        if self.challenger is not None:
            self.challenger.stop()

    def canary(self) -> Canary | None:
        """The challenger this process serves now, or None (no canary, or not loaded here)."""
        model = self.challenger.held() if self.challenger is not None else None
        if model is None:
            return None
        return Canary(model.version, model.ref, self.share)

    def model_for(self, conversation: str) -> ChatModel:
        """The model that answers this conversation's next turn (held for the whole answer)."""
        challenger = self.challenger.held() if self.challenger is not None else None
        if challenger is not None and bucket(conversation, challenger.ref) < self.share:
            return challenger
        return self.champion.current()
