"""Chatbot and pipeline telemetry, aggregated in Redis so every replica adds up.

The chatbot calls `Recorder.record_answer` once per answer and `record_feedback` once per rating;
the retraining jobs call `record_retrain_run` and `record_promotion`. Each call is one pipelined
round trip of HINCRBY/HINCRBYFLOAT on one Redis hash whose fields are (sample name, label values):
counters and non-cumulative histogram buckets. Memory is therefore bounded by the number of
series (metrics x model versions x buckets), never by the number of events. `bigbertha exporter`
reads the hash back in one round trip and turns it into Prometheus families (see exporter.py).

A recorder call never breaks a chat: Redis gets `redis.timeout_seconds` to answer, after a failure
the recorder stops trying for a short back-off, every lost event is counted (and added to
`bigbertha_telemetry_dropped_total` once Redis is back), and warnings are rate-limited.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bigbertha.core.errors import ConfigError
from bigbertha.core.logs import RateLimitedLogger

if TYPE_CHECKING:
    import redis

    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

#: Redis hash holding every counter and histogram bucket (field: JSON [sample, *label values]).
METRICS_KEY = "bigbertha:telemetry:v1:metrics"
#: Redis hash: JSON [model, model_version] -> unix time it last served (set or answered).
SERVING_KEY = "bigbertha:telemetry:v1:serving"
#: Redis hash: JSON [model, model_version] -> unix time that version became the challenger;
#: a field lives exactly as long as the registry's challenger alias points at the version.
CANARY_KEY = "bigbertha:telemetry:v1:canary"

INF = math.inf
# Bucket bounds sit on the values the alert objectives use (values.yaml monitoring.rules).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, INF)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, INF)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, INF)

CHAT_LABELS = ("model", "model_version")
RETRAIN_RESULTS = ("succeeded", "failed", "skipped")
# challenger: passed the offline gate, serving a canary share; retired: the canary said no.
PROMOTION_DECISIONS = ("promoted", "rejected", "rollback", "challenger", "retired")
RATINGS = ("up", "down")
REFUSAL_REASONS = (
    "busy",
    "too_large",
    "invalid",
    "timeout",
    "person_limit",
    "unauthenticated",
)
# After a Redis failure, calls are dropped without a connection attempt for this long.
BACKOFF_SECONDS = 2.0
#: Versions the serving hash keeps besides challengers (redis.serving_versions_kept's default).
SERVING_VERSIONS_KEPT = 5
#: A serving time further ahead than this is a broken clock or garbage: it would make its
#: version the newest for ever, so it is deleted at write and ignored at read.
MAX_CLOCK_SKEW_SECONDS = 300.0

# The serving hash, trimmed in the same round trip as each write (atomic: one Lua script).
# Kept: every challenger (a field of the canary hash), then the `n` most recent versions,
# which hold the champion (it serves now) and the previous one (the rollback target).
# Deleted: anything older, and times beyond now + skew. O(1) while the hash is small.
_TRIM_SERVING = """
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('HLEN', KEYS[1]) <= n then
  local newest = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
    newest = math.max(newest, tonumber(v) or 0)
  end
  if newest <= limit then return 0 end
end
local all = redis.call('HGETALL', KEYS[1])
local rows, drop = {}, {}
for i = 1, #all, 2 do
  local t = tonumber(all[i + 1])
  if t == nil or t ~= t or t > limit then
    table.insert(drop, all[i])
  elseif redis.call('HEXISTS', KEYS[2], all[i]) == 0 then
    table.insert(rows, {all[i], t})
  end
end
table.sort(rows, function(a, b) return a[2] > b[2] end)
for i = n + 1, #rows do table.insert(drop, rows[i][1]) end
for i = 1, #drop, 1000 do
  redis.call('HDEL', KEYS[1], unpack(drop, i, math.min(i + 999, #drop)))
end
return #drop
"""


def kept_versions(
    seen: dict[tuple[str, ...], float],
    challengers: Iterable[tuple[str, ...]],
    n: int = SERVING_VERSIONS_KEPT,
    now: float | None = None,
) -> dict[tuple[str, ...], float]:
    """The serving versions that matter, the rule `_TRIM_SERVING` applies at write: every
    challenger, and the `n` most recent of the others; none stamped from the future. The
    exporter reads through it, so a hash no writer trimmed still scrapes bounded."""
    limit = (time.time() if now is None else now) + MAX_CLOCK_SKEW_SECONDS
    current = {v: t for v, t in seen.items() if t <= limit}
    pinned = {v: current[v] for v in challengers if v in current}
    rest = sorted((v for v in current if v not in pinned), key=current.__getitem__, reverse=True)
    return pinned | {v: current[v] for v in rest[:n]}


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family: its name, type, help text, label names and buckets."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


REQUESTS = MetricSpec(
    "bigbertha_chat_requests_total", "counter", "Answers the chatbot produced.", CHAT_LABELS
)
ERRORS = MetricSpec(
    "bigbertha_chat_errors_total", "counter", "Answers that failed with an error.", CHAT_LABELS
)
LATENCY = MetricSpec(
    "bigbertha_chat_latency_seconds",
    "histogram",
    "Time from question to complete answer.",
    CHAT_LABELS,
    LATENCY_BUCKETS,
)
TTFT = MetricSpec(
    "bigbertha_chat_ttft_seconds",
    "histogram",
    "Time from question to the first streamed token.",
    CHAT_LABELS,
    TTFT_BUCKETS,
)
TOKENS = MetricSpec(
    "bigbertha_chat_tokens_total",
    "counter",
    "Tokens processed, by kind (prompt or completion).",
    (*CHAT_LABELS, "kind"),
)
FEEDBACK = MetricSpec(
    "bigbertha_feedback_total", "counter", "User ratings of answers.", (*CHAT_LABELS, "rating")
)
# A vote changed on the same answer (up, then down) is one vote: the first is counted here as
# replaced (counters never go down), so the votes standing are feedback - replaced.
FEEDBACK_REPLACED = MetricSpec(
    "bigbertha_feedback_replaced_total",
    "counter",
    "User ratings replaced by a later rating of the same answer (standing = feedback - this).",
    (*CHAT_LABELS, "rating"),
)
# People, not votes: each vote adds its person's pseudonym to HyperLogLogs (PFADD, ~0.8% error,
# 12 KiB each at most) per version and rating, one per 5-minute bucket (the alert's window is a
# union of buckets) and one since the version first answered (the canary's floor).
VOTERS = MetricSpec(
    "bigbertha_feedback_voters",
    "gauge",
    "Distinct people (pseudonyms) who rated the version's answers over the last "
    "exporter.voters_window_seconds (up to one 5-minute bucket more).",
    (*CHAT_LABELS, "rating"),
)
VOTERS_PREFIX = "bigbertha:telemetry:v1:voters"
VOTER_BUCKET_SECONDS = 300
VOTER_BUCKET_TTL_SECONDS = 8 * 86400
VOTER_TOTAL_TTL_SECONDS = 90 * 86400


def voters_key(model: str, version: str, rating: str, bucket: int | str) -> str:
    """The HyperLogLog of who rated (model, version) `rating` in `bucket` (or "all")."""
    return f"{VOTERS_PREFIX}:{field('voters', model, version, rating)}:{bucket}"


def voter_window_keys(
    model: str, version: str, rating: str, window_seconds: float, now: float
) -> list[str]:
    """The bucket keys covering [now - window, now]."""
    first = int((now - window_seconds) // VOTER_BUCKET_SECONDS)
    last = int(now // VOTER_BUCKET_SECONDS)
    return [voters_key(model, version, rating, b) for b in range(first, last + 1)]


#: Redis string per rated answer: its standing rating, so a new one replaces it (SET ... GET).
RATING_KEY = "bigbertha:telemetry:v1:rating:{}"
#: How long an answer's rating is remembered for replacing: longer than anyone re-rates.
RATING_TTL_SECONDS = 7 * 86400
RETRIEVAL_SCORE = MetricSpec(
    "bigbertha_retrieval_score",
    "histogram",
    "Similarity scores of the top-k chunks retrieved for each question.",
    CHAT_LABELS,
    SCORE_BUCKETS,
)
RETRIEVAL_EMPTY = MetricSpec(
    "bigbertha_retrieval_empty_total",
    "counter",
    "Questions answered with no context chunk retrieved.",
    CHAT_LABELS,
)
MODEL_INFO = MetricSpec(
    "bigbertha_model_info", "gauge", "Model versions currently serving (value 1).", CHAT_LABELS
)
RETRAIN_RUNS = MetricSpec(
    "bigbertha_retrain_runs_total", "counter", "Retraining pipeline runs by result.", ("result",)
)
PROMOTIONS = MetricSpec(
    "bigbertha_promotions_total",
    "counter",
    "Promotion decisions: the offline gate's and the live canary's.",
    ("decision",),
)
CANARY_STARTED = MetricSpec(
    "bigbertha_canary_started_timestamp_seconds",
    "gauge",
    "Unix time a challenger version started serving its canary share (while it is challenger).",
    CHAT_LABELS,
)
REFUSED = MetricSpec(
    "bigbertha_chat_refused_total",
    "counter",
    "Questions refused before any work: busy (answer queue full), too_large, invalid, timeout.",
    ("reason",),
)
#: What prepare-data did with each training row it read (training/data.py's DROP_REASONS).
TRAINING_ROW_OUTCOMES = (
    "kept",
    "malformed",
    "foreign_prompt",
    "duplicate",
    "too_long",
    "personal_data",
    "near_duplicate",
    "contributor_cap",
)
TRAINING_ROWS = MetricSpec(
    "bigbertha_training_rows_total",
    "counter",
    "Rows prepare-data read for training, by outcome: kept, or why left out (contributor_cap: "
    "a person's up-rated turns beyond finetune.max_rows_per_contributor).",
    ("outcome",),
)
DROPPED = MetricSpec(
    "bigbertha_telemetry_dropped_total",
    "counter",
    "Telemetry events lost because Redis was unreachable (reported once it is back).",
)
REDIS_UP = MetricSpec(
    "bigbertha_exporter_redis_up", "gauge", "1 if the exporter could read Redis on this scrape."
)
SKIPPED = MetricSpec(
    "bigbertha_exporter_skipped_fields",
    "gauge",
    "Redis hash fields (or whole keys) the last scrape could not use and left out, by reason.",
    ("key", "reason"),
)
#: Why the exporter leaves stored data out (each a value of SKIPPED's `reason` label).
SKIP_REASONS = ("encoding", "format", "unknown", "value", "wrong_type")

#: The families read from the metrics hash, by sample name prefix (the exporter's table).
STORED = (
    REQUESTS,
    ERRORS,
    LATENCY,
    TTFT,
    TOKENS,
    FEEDBACK,
    FEEDBACK_REPLACED,
    RETRIEVAL_SCORE,
    RETRIEVAL_EMPTY,
    RETRAIN_RUNS,
    PROMOTIONS,
    REFUSED,
    TRAINING_ROWS,
    DROPPED,
)


def bound_label(bound: float) -> str:
    """A bucket bound as Prometheus writes it in `le` ("0.5", "1.0", "+Inf")."""
    return "+Inf" if bound == INF else repr(float(bound))


def field(sample: str, *label_values: str) -> str:
    """The hash field of one sample: a JSON array, so any label value round-trips."""
    return json.dumps([sample, *label_values], ensure_ascii=False, separators=(",", ":"))


def bucket_for(buckets: Sequence[float], value: float) -> float:
    """The smallest bound >= value (buckets are stored non-cumulative; the exporter sums)."""
    for bound in buckets:
        if value <= bound:
            return bound
    return INF


@functools.lru_cache(maxsize=1024)
def _fields(spec: MetricSpec, labels: tuple[str, ...]) -> dict[str, str]:
    """Precomputed fields of one histogram label set: bucket bound label -> field, and sum."""
    out = {
        bound_label(b): field(spec.name + "_bucket", *labels, bound_label(b)) for b in spec.buckets
    }
    out["sum"] = field(spec.name + "_sum", *labels)
    return out


@functools.lru_cache(maxsize=1024)
def _field(name: str, labels: tuple[str, ...]) -> str:
    return field(name, *labels)


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def valid_amount(value: float | None) -> bool:
    """What a counter increment or histogram observation may be: a finite number >= 0.

    Checked at write (here) and at read (the exporter): one NaN or negative sample would make
    a counter go backwards, and a NaN counter makes an OpenMetrics scrape unparseable.
    """
    return _finite(value) and not isinstance(value, bool) and value >= 0  # type: ignore[operator]


class Recorder:
    """Writes telemetry aggregates to Redis; every public method is safe to call from a chat.

    Thread-safe (the redis client pools connections). With no Redis configured each call is a
    no-op that only counts the dropped event in `dropped`.
    """

    def __init__(
        self,
        client: redis.Redis | None,
        model: str,
        *,
        backoff_seconds: float = BACKOFF_SECONDS,
        clock: Any = time.monotonic,
        serving_versions_kept: int = SERVING_VERSIONS_KEPT,
    ) -> None:
        self._client = client
        self._model = model
        self._kept = serving_versions_kept
        self._backoff = backoff_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._unreported = 0  # drops not yet added to the Redis counter
        self._refused: dict[str, int] = {}  # refusals not yet written
        self._flushing_refused = False
        self.dropped = 0
        self._warn = RateLimitedLogger(log, interval=30.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> Recorder:
        """A recorder for `settings.redis.url` labelled with `settings.mlflow.model_name`.

        Raises ConfigError for a malformed URL; an empty one means telemetry off.
        """
        model = settings.mlflow.model_name
        url = settings.redis.url.get_secret_value() if settings.redis.url else ""
        if not url:
            log.info("telemetry off: redis.url is not set (BIGBERTHA_REDIS__URL)")
            return cls(None, model)
        client = redis_client(url, settings.redis.timeout_seconds)
        return cls(client, model, serving_versions_kept=settings.redis.serving_versions_kept)

    # -- the interface the chatbot and the jobs call -------------------------------------------

    def record_answer(
        self,
        model_version: str,
        *,
        latency_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        scores: Sequence[float],
        context_chunks: int,
        error: bool = False,
    ) -> None:
        """One answer: request, error, latency, TTFT, tokens, retrieval scores, empty retrieval."""
        labels = (self._model, str(model_version))
        incr: dict[str, float] = {_field(REQUESTS.name, labels): 1}
        if error:
            incr[_field(ERRORS.name, labels)] = 1
        rejected = self._observe(incr, LATENCY, labels, [latency_s])
        if ttft_s is not None:
            rejected += self._observe(incr, TTFT, labels, [ttft_s])
        for kind, count in (("prompt", prompt_tokens), ("completion", completion_tokens)):
            if valid_amount(count) and count > 0:
                incr[_field(TOKENS.name, (*labels, kind))] = int(count)
            elif count != 0:
                rejected += 1
        # Cosine similarity can be below 0: such a chunk is observed as 0 (the lowest bucket
        # either way), so the count stays true and the sum never decreases.
        floored = [max(s, 0.0) if _finite(s) else s for s in scores]
        rejected += self._observe(incr, RETRIEVAL_SCORE, labels, floored)
        if context_chunks == 0:
            incr[_field(RETRIEVAL_EMPTY.name, labels)] = 1
        if rejected:
            self._warn.warning(
                "telemetry: %d value(s) of an answer by %s were not finite or negative; left out",
                rejected,
                model_version,
            )
        self._write(incr, serving=labels)

    def record_feedback(
        self,
        model_version: str,
        rating: Literal["up", "down"],
        answer: str | None = None,
        person: str | None = None,
    ) -> None:
        """One user rating of an answer produced by `model_version`, by `person` (a pseudonym:
        counted among the version's distinct voters).

        With the answer's id, one vote per answer: the same rating again counts nothing, the
        other rating replaces it (the old one counted as replaced), atomically in one script.
        """
        if rating not in RATINGS:
            return self._reject(f"rating {rating!r} is not one of {RATINGS}")
        labels = (self._model, str(model_version), rating)
        voter = None
        if person:
            bucket = int(time.time() // VOTER_BUCKET_SECONDS)
            voter = (person, voters_key(*labels, bucket), voters_key(*labels, "all"))
        if answer is None:
            return self._write({_field(FEEDBACK.name, labels): 1}, voter=voter)
        other = "down" if rating == "up" else "up"
        self._write(
            {},
            voter=voter,
            vote=(
                RATING_KEY.format(answer),
                rating,
                _field(FEEDBACK.name, labels),
                _field(FEEDBACK_REPLACED.name, (self._model, str(model_version), other)),
            ),
        )
        return None

    def voters(self, model_version: str) -> int | None:
        """Distinct people who rated `model_version` since it first answered (either rating);
        None when Redis cannot be read."""
        if self._client is None:
            return None
        keys = [voters_key(self._model, str(model_version), r, "all") for r in RATINGS]
        try:
            return int(self._client.pfcount(*keys))
        except Exception as exc:  # whatever the client raises: the caller decides
            self._warn.warning("telemetry: cannot read the voters (%s)", exc)
            return None

    def feedback_totals(self) -> dict[tuple[str, str, str], int] | None:
        """(sample, model_version, rating) -> count of this model's vote counters in Redis
        (sample: FEEDBACK's or FEEDBACK_REPLACED's name); None when Redis cannot be read."""
        if self._client is None:
            return None
        try:
            stored = self._client.hgetall(METRICS_KEY)
        except Exception as exc:  # whatever the client raises: the caller falls back
            self._warn.warning("telemetry: cannot read the vote counters (%s)", exc)
            return None
        out: dict[tuple[str, str, str], int] = {}
        for name, value in stored.items():
            try:
                sample, model, version, rating = json.loads(name)
                count = int(float(value))
            except (ValueError, TypeError):
                continue
            if model == self._model and sample in (FEEDBACK.name, FEEDBACK_REPLACED.name):
                out[(sample, version, rating)] = count
        return out

    def record_retrain_run(self, result: str) -> None:
        """One retraining pipeline run: succeeded, failed or skipped."""
        if result not in RETRAIN_RESULTS:
            return self._reject(f"retrain result {result!r} is not one of {RETRAIN_RESULTS}")
        self._write({_field(RETRAIN_RUNS.name, (result,)): 1})

    def record_training_rows(self, outcomes: dict[str, int]) -> None:
        """One prepare-data run's rows by outcome (its data card: kept, and each drop reason)."""
        unknown = sorted(set(outcomes) - set(TRAINING_ROW_OUTCOMES))
        if unknown:
            return self._reject(f"training row outcomes {unknown} not in {TRAINING_ROW_OUTCOMES}")
        self._write({_field(TRAINING_ROWS.name, (k,)): int(n) for k, n in outcomes.items() if n})
        return None

    def record_promotion(self, decision: str) -> None:
        """One promotion gate decision: promoted, rejected or rollback."""
        if decision not in PROMOTION_DECISIONS:
            return self._reject(f"decision {decision!r} is not one of {PROMOTION_DECISIONS}")
        self._write({_field(PROMOTIONS.name, (decision,)): 1})

    def record_refused(self, reason: str) -> None:
        """One question refused before any work (see REFUSAL_REASONS).

        Cheap under a flood: refusals that arrive while another thread writes are added to
        that thread's next write, so a burst of N refusals is a few round trips, not N.
        """
        if reason not in REFUSAL_REASONS:
            return self._reject(f"refusal reason {reason!r} is not one of {REFUSAL_REASONS}")
        with self._lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1
            if self._flushing_refused:
                return None
            self._flushing_refused = True
        while True:
            with self._lock:
                pending, self._refused = self._refused, {}
                if not pending:
                    self._flushing_refused = False
                    return None
            self._write({_field(REFUSED.name, (r,)): n for r, n in pending.items()})

    def set_serving_model(self, model_version: str) -> None:
        """Mark `model_version` as serving now (exported as bigbertha_model_info)."""
        self._write({}, serving=(self._model, str(model_version)))

    def set_canary(self, model_version: str, started_at: float) -> None:
        """`model_version` is the challenger since `started_at` (unix time); idempotent."""
        self._write({}, canary=((self._model, str(model_version)), started_at))

    def end_canary(self, model_version: str) -> None:
        """`model_version` is no longer the challenger (promoted or retired)."""
        self._write({}, canary=((self._model, str(model_version)), None))

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _observe(
        incr: dict[str, float], spec: MetricSpec, labels: tuple[str, ...], values: Iterable[float]
    ) -> int:
        """Add `values` to `spec`'s buckets and sum; the number left out (not valid amounts)."""
        fields = _fields(spec, labels)
        rejected = 0
        for value in values:
            if not valid_amount(value):
                rejected += 1
                continue
            value = float(value)
            bucket = fields[bound_label(bucket_for(spec.buckets, value))]
            incr[bucket] = incr.get(bucket, 0) + 1
            incr[fields["sum"]] = incr.get(fields["sum"], 0.0) + value
        return rejected

    def _reject(self, reason: str) -> None:
        # A caller bug, not an outage: keep the chat going, say why once in a while.
        self._count_drop()
        self._warn.warning("telemetry event dropped: %s", reason)

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1
            if self._client is not None:
                self._unreported += 1

    def _write(
        self,
        incr: dict[str, float],
        serving: tuple[str, ...] | None = None,
        canary: tuple[tuple[str, ...], float | None] | None = None,
        vote: tuple[str, str, str, str] | None = None,
        voter: tuple[str, str, str] | None = None,
    ) -> None:
        client = self._client
        if client is None:
            self._count_drop()
            return
        if self._clock() < self._retry_at:
            self._count_drop()
            return
        with self._lock:  # take them, so two threads never report the same drops
            unreported, self._unreported = self._unreported, 0
        pipe = client.pipeline(transaction=False)
        for name, amount in incr.items():
            if isinstance(amount, float):
                pipe.hincrbyfloat(METRICS_KEY, name, amount)
            else:
                pipe.hincrby(METRICS_KEY, name, int(amount))
        if unreported:
            pipe.hincrby(METRICS_KEY, _field(DROPPED.name, ()), unreported)
        if serving is not None:
            now = time.time()
            pipe.hset(SERVING_KEY, _field(serving[0], serving[1:]), repr(now))
            # EVAL, not EVALSHA: a registered script costs a SCRIPT EXISTS round trip per
            # pipeline (redis-py's Pipeline.load_scripts); the text is under 1 KiB.
            limit = repr(now + MAX_CLOCK_SKEW_SECONDS)
            pipe.eval(_TRIM_SERVING, 2, SERVING_KEY, CANARY_KEY, self._kept, limit)
        if canary is not None:
            (model, *version), started = canary
            if started is None:
                pipe.hdel(CANARY_KEY, _field(model, tuple(version)))
            else:
                pipe.hset(CANARY_KEY, _field(model, tuple(version)), repr(float(started)))
        if vote is not None:
            key, rating, cast, replaced = vote
            pipe.eval(_VOTE_SCRIPT, 2, key, METRICS_KEY, rating, cast, replaced, RATING_TTL_SECONDS)
        if voter is not None:
            person, bucket_key, total_key = voter
            pipe.pfadd(bucket_key, person)
            pipe.expire(bucket_key, VOTER_BUCKET_TTL_SECONDS)
            pipe.pfadd(total_key, person)
            pipe.expire(total_key, VOTER_TOTAL_TTL_SECONDS)
        try:
            pipe.execute()
        except Exception as exc:  # whatever the client raises, the chat goes on
            self._retry_at = self._clock() + self._backoff
            with self._lock:
                self._unreported += unreported
            self._count_drop()
            self._warn.warning(
                "telemetry dropped (Redis unreachable: %s); %d events lost so far",
                exc,
                self.dropped,
            )
            return
        finally:
            pipe.reset()


# KEYS: the answer's rating, the metrics hash; ARGV: the rating, its field, the other rating's
# replaced field, the TTL. A rating equal to the standing one counts nothing; a different one
# counts and marks the standing one replaced; one script, so two clicks never both count.
_VOTE_SCRIPT = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
if old == ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if old then redis.call('HINCRBY', KEYS[2], ARGV[3], 1) end
return 1
"""


def redis_client(url: str, timeout: float, *, decode: bool = True) -> redis.Redis:
    """A Redis client that gives up after `timeout` seconds and never retries on its own.

    Connects lazily. `decode=False` returns bytes: a reader of data others wrote (the
    exporter) decodes each field itself, so one invalid UTF-8 field cannot fail a whole reply.
    Raises ConfigError (without echoing the URL: it may hold a password).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=decode,
        )
    except ValueError as exc:
        raise ConfigError(
            f"invalid setting redis.url: {exc} (expected redis://[:password@]host:port/db)"
        ) from None
