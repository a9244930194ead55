"""Who is asking and voting: a pseudonym per person, and limits per person.

A person is known by a **pseudonym**: HMAC-SHA256 of their subject under
``chat.identity_key`` (a Secret the chart generates and keeps), cut to 32 hex characters. The
subject is the sign-on's ``sub`` claim when there is one, else what the chatbot can tell apart
(a browser session, an API client's address); neither the subject nor a name or e-mail is ever
stored, and without the key a pseudonym cannot be linked back. Every turn and vote in the
feedback log carries its person's pseudonym (`contributor`), which prepare-data caps
(``finetune.max_rows_per_contributor``).

`PersonLimits` bounds what one person does, from settings: ``chat.questions_per_minute`` and
``chat.votes_per_hour``, counted in Redis (one fixed window per person and kind, INCR + EXPIRE:
every chatbot replica shares the count). Over the limit is `PersonLimited` (429 + Retry-After on
the API, a one-line warning in the UI). With Redis unreachable the limits are not enforced
(answers are the product; the outage is logged once and shown with the feedback warning), and
neither is anything recorded that they would guard.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

from bigbertha.chat.limits import ClientBusy

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "bigbertha:limits"
Kind = Literal["question", "vote"]
# Window of each kind: questions are limited per minute, votes per hour.
WINDOWS: dict[str, int] = {"question": 60, "vote": 3600}


class PersonLimited(ClientBusy):
    """This person asked or voted as often as a window allows: try again after `retry_after`."""

    reason = "person_limit"


def identity_key(settings: Settings) -> bytes:
    """The pseudonym key: ``chat.identity_key``, else a random one for this process (pseudonyms
    then change at each restart and differ between replicas; the chart always sets one)."""
    key = settings.chat.identity_key
    if key is not None and key.get_secret_value():
        return key.get_secret_value().encode()
    log.warning(
        "chat.identity_key is unset: pseudonyms are random per process, so per-person limits and "
        "the training cap per contributor do not hold across restarts or replicas"
    )
    return secrets.token_bytes(32)


def pseudonym(subject: str, key: bytes) -> str:
    """The person's pseudonym: HMAC-SHA256(key, subject), 128 bits in hex."""
    return hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


class PersonLimits:
    """Questions per minute and votes per hour per pseudonym, counted in Redis."""

    def __init__(self, client: Any | None, limits: dict[str, int]) -> None:
        self._client = client
        self._limits = limits
        self._down = False

    @classmethod
    def from_settings(cls, settings: Settings, client: Any | None) -> PersonLimits:
        chat = settings.chat
        return cls(client, {"question": chat.questions_per_minute, "vote": chat.votes_per_hour})

    def admit(self, person: str, kind: Kind, now: float | None = None) -> None:
        """Count one `kind` for `person`; `PersonLimited` when that is over the limit."""
        limit, window = self._limits.get(kind, 0), WINDOWS[kind]
        if limit <= 0 or self._client is None:
            return
        now = time.time() if now is None else now
        start = math.floor(now / window) * window
        key = f"{KEY_PREFIX}:{kind}:{person}:{start}"
        try:
            pipe = self._client.pipeline()
            pipe.incr(key)
            pipe.expire(key, window * 2)
            count = int(pipe.execute()[0])
        except Exception as exc:  # redis errors: limits off while it is down, never the chat
            if not self._down:
                log.warning("per-person limits not enforced: Redis unreachable (%s)", exc)
            self._down = True
            return
        self._down = False
        if count > limit:
            retry_after = max(1, math.ceil(start + window - now))
            per = "minute" if kind == "question" else "hour"
            raise PersonLimited(
                f"too many {kind}s: at most {limit} per {per} per person; "
                f"try again in {retry_after} s",
                retry_after,
            )
