"""The per-process model server with champion hot-swap.

`ModelServer` holds ONE model per process, shared by every chat session. With
`chat.champion_alias` set, it polls the registry alias every `chat.champion_poll_seconds`; when
the alias moves it loads the new version in a background thread and swaps it in with one
reference assignment. An answer keeps the model object it started with, so answers in flight
finish on the old model; a failed load or an unreachable registry keeps the current model and is
logged, counted and shown in `status()`.

Both backends follow the alias the same way, through a ref ``models:/<name>/<version>``:
in process (`load_transformers`) the version is downloaded and loaded here; on the inference
tier (`load_openai`) it is the adapter the tier's sidecar loaded under its served name, and the
"load" succeeds once the tier lists it. Without a champion the fallback (`llm.model`: the tier's
base model) serves. `ModelServer.from_settings(settings, alias=...)` follows any alias, e.g. a
second server for the canary's challenger.

Without a fallback (`fallback_ref=None`, the canary's challenger server) the server holds a
model only while the alias is set: it starts empty, and lets its model go when the alias goes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bigbertha.chat.llm import ChatModel, ModelLoadError, load_openai, load_transformers
from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServerStatus:
    """What the UI shows about the model being served."""

    version: str
    ref: str
    loaded_at: float
    swaps: int = 0
    checks: int = 0
    registry_failures: int = 0
    load_failures: int = 0
    last_error: str | None = None
    registry_ok: bool = True
    loading: str | None = None
    history: list[str] = field(default_factory=list)


class ModelServer:
    """One chat model per process, replaced atomically when the champion moves.

    `load(ref)` builds a model; `champion()` returns the ref the registry says to serve
    (e.g. "models:/bigbertha-llm/3"), None when there is none (`fallback_ref` then serves), and
    raises when the registry is unreachable. Without `champion` it just serves `fallback_ref`;
    with `fallback_ref=None` it holds nothing while `champion()` says None (`held()` is None).
    """

    def __init__(
        self,
        load: Callable[[str], ChatModel],
        *,
        fallback_ref: str | None,
        champion: Callable[[], str | None] | None = None,
        poll_seconds: float = 30.0,
    ) -> None:
        #: Called with each model swapped in (e.g. to mark it serving in telemetry at once).
        self.on_swap: Callable[[ChatModel], None] | None = None
        #: Called with the model a server without fallback lets go when its alias is removed.
        self.on_release: Callable[[ChatModel], None] | None = None
        self._load = load
        self._fallback = fallback_ref
        self._champion = champion
        self._poll = poll_seconds
        self._model: ChatModel | None = None
        self._status: ServerStatus | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, alias: str | None = None, fallback: bool = True
    ) -> ModelServer:
        """The server the settings describe, following `alias` (default `chat.champion_alias`;
        '' serves `llm.model` only) on either backend; `fallback=False` serves nothing while
        the alias is unset instead of `llm.model` (the canary's challenger)."""
        alias = settings.chat.champion_alias if alias is None else alias
        return cls(
            chat_model_loader(settings),
            fallback_ref=settings.llm.model if fallback else None,
            champion=registry_alias(settings, alias) if alias else None,
            poll_seconds=settings.chat.champion_poll_seconds,
        )

    # The model object an answer must hold on to for its whole generation.
    def current(self) -> ChatModel:
        model = self._model
        if model is None:
            raise ModelLoadError("no chat model is loaded yet: call ModelServer.start()")
        return model

    def held(self) -> ChatModel | None:
        """The model now, or None (not started, or no fallback and the alias unset)."""
        return self._model

    def status(self) -> ServerStatus:
        with self._lock:
            if self._status is None:
                raise ModelLoadError("no chat model is loaded yet")
            return ServerStatus(**vars(self._status))

    def start(self, *, watch: bool = True) -> ModelServer:
        """Load the champion (or the fallback model), then poll in the background if `watch`."""
        wanted, registry_error = self._ask_registry()
        first = wanted or self._fallback
        model: ChatModel | None = None
        try:
            model = self._load(first) if first else None
        except Exception as exc:
            if first == self._fallback:
                raise _as_load_error(str(first), exc) from exc
            instead = self._fallback or "nothing"
            log.error("chat model %s failed to load (%s); serving %s", first, exc, instead)
            registry_error = f"champion {first} failed to load: {exc}"
            model = self._load_fallback() if self._fallback else None
        with self._lock:
            self._model = model
            self._status = ServerStatus(
                version=model.version if model else "",
                ref=model.ref if model else "",
                loaded_at=time.time(),
                checks=1 if self._champion else 0,
                registry_failures=1 if registry_error and wanted is None else 0,
                last_error=registry_error,
                registry_ok=registry_error is None or wanted is not None,
                history=[model.version] if model else [],
            )
        if model is not None:
            log.info("serving chat model %s (version %s)", model.ref, model.version)
        if watch and self._champion is not None:
            self._thread = threading.Thread(
                target=self._watch, name="bigbertha-champion-watch", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_now(self) -> bool:
        """One poll of the registry; loads and swaps if the champion moved. True if swapped."""
        wanted, error = self._ask_registry()
        with self._lock:
            assert self._status is not None
            self._status.checks += 1
            self._status.registry_ok = error is None
            if error is not None:
                self._status.registry_failures += 1
                self._status.last_error = error
            current_ref = self._status.ref
        if wanted is None and error is None and self._fallback is None and current_ref:
            return self._release()  # no fallback: the alias was removed, serve nothing
        if wanted is None and error is None and self._champion is not None:
            wanted = self._fallback  # the alias was removed: back to the fallback model
        if wanted is None or wanted == current_ref:
            return False
        log.info("champion moved to %s; loading it in the background", wanted)
        with self._lock:
            assert self._status is not None
            self._status.loading = wanted
        try:
            model = self._load(wanted)
        except Exception as exc:
            log.error("champion %s failed to load, keeping %s: %s", wanted, current_ref, exc)
            with self._lock:
                assert self._status is not None
                self._status.loading = None
                self._status.load_failures += 1
                self._status.last_error = f"champion {wanted} failed to load: {exc}"
            return False
        with self._lock:
            assert self._status is not None
            self._model = model  # the swap: new answers get the new model from here on
            self._status.version = model.version
            self._status.ref = model.ref
            self._status.loaded_at = time.time()
            self._status.swaps += 1
            self._status.loading = None
            self._status.last_error = None
            self._status.history.append(model.version)
        log.info("now serving chat model %s (version %s)", model.ref, model.version)
        if self.on_swap is not None:
            try:
                self.on_swap(model)
            except Exception:  # a telemetry hiccup must not undo or fail the swap
                log.exception("on_swap hook failed after swapping to %s", model.ref)
        return True

    def _release(self) -> bool:
        """The alias is gone and there is no fallback: stop serving (answers in flight finish)."""
        with self._lock:
            model, self._model = self._model, None
            assert self._status is not None
            self._status.version = self._status.ref = ""
            self._status.loaded_at = time.time()
        if model is None:
            return False
        log.info("alias removed: no longer serving chat model %s", model.ref)
        if self.on_release is not None:
            try:
                self.on_release(model)
            except Exception:  # as on_swap: telemetry must not fail the release
                log.exception("on_release hook failed after releasing %s", model.ref)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any single bad poll
                log.exception("champion check failed")

    def _ask_registry(self) -> tuple[str | None, str | None]:
        if self._champion is None:
            return None, None
        try:
            return self._champion(), None
        except Exception as exc:
            log.warning("model registry unreachable, keeping the current model: %s", exc)
            return None, f"model registry unreachable: {exc}"

    def _load_fallback(self) -> ChatModel:
        assert self._fallback is not None
        try:
            return self._load(self._fallback)
        except Exception as exc:
            raise _as_load_error(self._fallback, exc) from exc


def _as_load_error(ref: str, exc: Exception) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    return ModelLoadError(f"chat model {ref}: {exc}")


def chat_model_loader(settings: Settings) -> Callable[[str], ChatModel]:
    """ref -> loaded ChatModel for the configured backend (see the module docstring)."""
    if settings.llm.backend == "openai":
        return lambda ref: load_openai(settings, ref)
    return lambda ref: load_transformers(ref, settings)


def registry_alias(settings: Settings, alias: str) -> Callable[[], str | None]:
    """The registry ref `alias` points at, e.g. models:/bigbertha-llm/3 (None: alias unset)."""

    def current() -> str | None:
        from bigbertha.models.registry import alias_version

        version = alias_version(settings, alias=alias)
        return None if version is None else f"models:/{settings.mlflow.model_name}/{version}"

    return current
