"""The demo's live canary: scripted raters vote on the champion's and the challenger's answers
until the retraining workflow's canary step decides.

When the offline gate made the new version the challenger (values/demo.yaml runs a canary),
`canary_round`:

1. waits until the running chatbot serves the challenger (its /api/status names it);
2. plays users (as many at once as the chatbot answers at once) through the chatbot's JSON
   API: each opens a conversation, reads the first answer (which tells which model the
   conversation was routed to), and rates the next answers of the same conversation, checking
   every turn came from the same model (sticky routing). The raters' taste (`prefer`) decides
   how: the preferred side's answers are mostly rated up, the other side's mostly down. Once a
   side has the sequential test's planned votes, users routed to it leave unrated;
3. goes on until the workflow's canary step has decided, and records the decision, the votes
   it counted, and the time from the challenger's start to the decision.

The report (local/report.py) shows the decision with its numbers, and plots both versions'
down-vote ratios since the challenger started.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bigbertha.chat.api import ask_server
from bigbertha.local.platform import QUESTIONS, LocalPlatform, chatbot_status
from bigbertha.local.timeline import DemoFailed, Timeline, wait_for

if TYPE_CHECKING:
    from bigbertha.local.gateway import WorkflowRun

Side = Literal["challenger", "champion"]
#: Ratings by taste, in turn: the liked side gets 3 of 4 answers up, the other half of them.
#: 0.25 apart, values/demo.yaml's margin: the canary's sequential test tells them apart in 10
#: votes a side and never the wrong way within its plan (tests/local/test_canary.py); neither
#: side ever has more than half its votes down, the demo's retrain-alert threshold, so the
#: canary's own votes never start another retraining.
TASTE = {"liked": ("up", "up", "down", "up"), "disliked": ("up", "down")}
RATED_TURNS = 3  # per conversation, after the first turn that shows the model


def step(run: WorkflowRun, name: str) -> dict[str, Any] | None:
    """A workflow step's record once it has finished, else None."""
    return next((s for s in run.steps if s["name"] == name and "finished" in s), None)


def canary_round(
    platform: LocalPlatform,
    timeline: Timeline,
    run: WorkflowRun,
    *,
    number: int,
    challenger: str,
    prefer: Side,
) -> dict[str, Any]:
    """Round `number`'s canary of version `challenger`, started by `run`'s gate: raters vote
    until its canary step decides; the decision, its votes and its timing."""
    from bigbertha.models import registry
    from bigbertha.training.canary import STARTED_TAG, Design

    tag = f"round {number}: "
    url = platform.urls["chatbot"]
    with timeline.stage(tag + "chatbot serves the canary") as st:
        status = wait_for(
            f"the chatbot to serve challenger {challenger}",
            lambda: (
                ((s := chatbot_status(url)).get("canary") or {}).get("version") == challenger and s
            ),
            180,
            1,
        )
        st.result = (
            f"champion {status['model_version']}, challenger {challenger} on "
            f"{status['canary']['share']:.0%} of new conversations"
        )
    votes: dict[str, dict[str, int]] = {}
    stored: list[Vote] = []  # every vote cast, with when the chatbot stored it
    with timeline.stage(tag + f"raters prefer the {prefer}") as st:
        taste = {
            side: _Shared(itertools.cycle(TASTE["liked" if side == prefer else "disliked"]))
            for side in ("challenger", "champion")
        }
        questions = _Shared(itertools.cycle(QUESTIONS))
        # Each conversation is another person: its own loopback address, which the chatbot
        # (no sign-on locally) keys their pseudonym by.
        people = _Shared(rater_address(n) for n in itertools.count())
        settings = platform.settings()
        failed = threading.Event()
        counting = threading.Lock()

        def decided() -> bool:
            # The aliases move as the step decides; the step's process ends a little later.
            if failed.is_set() or step(run, "canary") is not None or run.finished:
                return True
            return registry.alias_version(settings, registry.CHALLENGER) != challenger

        # The sequential test decides within its planned votes a side (canary.Design).
        planned = Design.from_settings(settings).planned_votes

        def wanted(side: Side) -> bool:
            # A user whose conversation landed on a side with its planned votes already cast
            # asks and leaves without rating: the other side's votes are what the canary needs.
            with counting:
                return sum(votes.get(side, {}).values()) < planned

        def user() -> int:
            """Conversations one after the other until the canary decides; how many."""
            conversations = 0
            try:
                while not decided():
                    conversations += 1
                    rater = _conversation(
                        url, questions, taste, challenger, decided, wanted, next(people)
                    )
                    for vote in rater:
                        if failed.is_set():
                            break  # Ctrl-C or another user's error: leave mid-conversation
                        with counting:
                            counted = votes.setdefault(vote.side, {"up": 0, "down": 0})
                            counted[vote.rating] += 1
                            stored.append(vote)
            except BaseException:
                failed.set()  # the other users stop too; the error surfaces below
                raise
            return conversations

        # As many users at once as the chatbot answers at once (chat.max_concurrent_answers).
        conversations = run_users(int(settings.chat.max_concurrent_answers), user, failed)
        st.result = f"{conversations} conversations, votes " + ", ".join(
            f"{side} {v['up']} up {v['down']} down" for side, v in sorted(votes.items())
        )
    with timeline.stage(tag + "canary decision") as st:
        settings = platform.settings()
        tags = registry.version_tags(settings, challenger)
        if "canary.decision" not in tags:
            raise DemoFailed(f"the canary step ended without a decision: {run.message}")
        report = json.loads(tags.get("canary.report", "{}"))
        decision = {
            "version": challenger,
            "decision": tags["canary.decision"],
            "reason": tags.get("canary.reason", ""),
            "challenger": report.get("challenger", {}),
            "champion": report.get("champion", {}),
            "champion_versions": report.get("champion_versions", []),
            "started_at": float(tags[STARTED_TAG]),
            "decided_at": report.get("decided_at"),
            "seconds": report.get("seconds"),
            "prefer": prefer,
            "rated": votes,
            "design": report.get("design", {}),
            "statistic": report.get("statistic", []),
        }
        # The raters' votes are what the canary decided on, every vote counted once: those the
        # chatbot stored before the scrape it counted, not those after (users mid-conversation
        # vote on while the step decides).
        counted = {
            side: (int(decision[side].get("up", 0)), int(decision[side].get("down", 0)))
            for side in ("challenger", "champion")
        }
        through = report.get("counted_through")
        if not through:
            raise DemoFailed("the canary's decision does not say when its counts were scraped")
        before, after = reconcile(stored, counted, (float(through[0]), float(through[1])))
        decision["rated_before_counts"] = before
        # Distinct people, as the chatbot knew them (their pseudonyms in Redis).
        from bigbertha.telemetry.recorder import Recorder

        decision["challenger_people"] = Recorder.from_settings(settings).voters(challenger)
        # Share back to 0: the chatbot lets the challenger go (promoted, it returns as champion).
        wait_for(
            "the chatbot to end the canary",
            lambda: chatbot_status(url).get("canary") is None,
            180,
            1,
        )
        st.result = (
            f"{decision['decision']} after {decision['seconds']:.0f}s from the challenger's "
            f"start ({decision['reason']}); votes (up, down) the canary counted {counted}, the "
            f"raters cast {before} before its counts were scraped and {after} after; "
            f"{decision['challenger_people']} people voted on the challenger; the chatbot "
            "ended the canary"
        )
    return decision


def run_users(at_once: int, user: Callable[[], int], stop: threading.Event) -> int:
    """`at_once` users in threads until each returns (a count); their total. Anything that ends
    the wait early (Ctrl-C, an error) sets `stop` and leaves the threads to finish their current
    answer: waiting for them instead kept a Ctrl-C'd demo rating until the canary decided."""
    pool = ThreadPoolExecutor(max_workers=at_once)
    try:
        return sum(pool.map(lambda _: user(), range(at_once)))
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)


@dataclass(frozen=True)
class Vote:
    """One rater's vote: on which side, which way, and when the chatbot stored it (its
    /api/ask `rated_at`; None: not stored)."""

    side: Side
    rating: str
    stored_at: float | None


#: A vote stored this close after a scrape's timestamp may be in it: the exporter reads Redis
#: while it is scraped, and `rated_at` is taken just after the write (load can delay it).
SCRAPE_SLACK_SECONDS = 2.0


def reconcile(
    stored: Sequence[Vote],
    counted: Mapping[str, tuple[int, int]],
    through: tuple[float, float],
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Check the canary's `counted` (side -> (up, down)) against the votes the raters cast:
    every vote stored before the oldest sample it counted (`through`) must be in it, none
    stored after the newest scrape (plus the slack); DemoFailed says which side and rating do
    not add up. Returns the votes (up, down) a side got before and after those scrapes."""
    oldest, newest = through
    sure: dict[tuple[str, str], int] = {}
    maybe: dict[tuple[str, str], int] = {}
    for vote in stored:
        key = (vote.side, vote.rating)
        if vote.stored_at is None or vote.stored_at > newest + SCRAPE_SLACK_SECONDS:
            continue  # not stored, or after the scrapes: must not be counted
        if vote.stored_at <= oldest:
            sure[key] = sure.get(key, 0) + 1
        else:
            maybe[key] = maybe.get(key, 0) + 1
    wrong = []
    for side in ("challenger", "champion"):
        for i, rating in enumerate(("up", "down")):
            key, got = (side, rating), counted.get(side, (0, 0))[i]
            low, high = sure.get(key, 0), sure.get(key, 0) + maybe.get(key, 0)
            if not low <= got <= high:
                wrong.append(
                    f"{side} {rating}: counted {got}, the raters stored {low} before the scrape"
                    + (f" and {high - low} during it" if high > low else "")
                )
    if wrong:
        raise DemoFailed("the canary did not count each vote once: " + "; ".join(wrong))

    # Checked: what the canary counted is what was stored before its scrapes; the rest came
    # after (a vote in the slack was one or the other, and the counts say which).
    cast: dict[str, list[int]] = {side: [0, 0] for side in ("challenger", "champion")}
    for vote in stored:
        cast.setdefault(vote.side, [0, 0])[0 if vote.rating == "up" else 1] += 1
    before = {side: counted.get(side, (0, 0)) for side in cast}
    after = {
        side: (cast[side][0] - before[side][0], cast[side][1] - before[side][1]) for side in cast
    }
    return before, after


class _Shared:
    """An iterator several rater threads draw from, one item at a time (so each side's ratings
    follow its taste's cycle exactly, however the threads interleave)."""

    def __init__(self, items: Iterator[str]) -> None:
        self._items, self._lock = items, threading.Lock()

    def __iter__(self) -> _Shared:
        return self

    def __next__(self) -> str:
        with self._lock:
            return next(self._items)


def rater_address(n: int, block: int = 0) -> str:
    """The `n`th demo rater's own loopback address (127.<block>.x.y: all of 127/8 is lo)."""
    return f"127.{block}.{n // 250}.{n % 250 + 2}"


def _conversation(
    url: str,
    questions: Iterator[str],
    taste: Mapping[str, Iterator[str]],
    challenger: str,
    decided: Callable[[], bool],
    wanted: Callable[[Side], bool],
    source: str | None = None,
) -> Iterator[Vote]:
    """One user's conversation: a first turn, then, if the side it landed on still `wanted`
    votes, rated turns; yields their votes.

    Every turn must come from the model of the first while the canary runs (sticky routing);
    once it has decided, the aliases move and the conversation simply ends."""
    first = ask_server(url, next(questions), timeout=300, source_address=source)
    conversation, version = first["conversation"], str(first["model_version"])
    side: Side = "challenger" if version == challenger else "champion"
    if not wanted(side):
        return
    for _ in range(RATED_TURNS):
        rating = next(taste[side])
        answer = ask_server(
            url,
            next(questions),
            rating=rating,
            conversation=conversation,
            timeout=300,
            source_address=source,
        )
        if str(answer["model_version"]) != version or answer["conversation"] != conversation:
            if decided():
                return
            raise DemoFailed(
                f"conversation {conversation} moved from model {version} to "
                f"{answer['model_version']}: routing is not sticky"
            )
        if not answer.get("error"):  # a failed answer is never rated
            yield Vote(side, rating, answer.get("rated_at"))
