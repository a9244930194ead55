"""Keep vLLM's LoRA adapters in step with the registry's aliases: the sidecar's one job.

Each pass (`AdapterSync.sync_once`, every `serving.poll_seconds` in `bigbertha serve-adapters`):

1. read the aliases champion, challenger and previous (and `chat.champion_alias`) of
   `mlflow.model_name`; an unreachable registry changes nothing;
2. for each aliased version that is a LoRA adapter trained on the base this pod serves, stage
   its files once into ``<serving.adapters_dir>/<served name>`` and load it through vLLM's
   POST /v1/load_lora_adapter. `models.registry.served_name` is the name: one per version, so new
   weights never reuse a name (vLLM's in-place reload keeps prefix-cache blocks computed with the
   old weights: ``OpenAIServingModels.load_lora_adapter`` in vLLM 0.33.0 warns about exactly that);
3. unload, and delete, adapters of this model that no alias points at any more;
4. when the champion is a full (merged) model, or the pod still serves a merged model that is no
   longer the champion, ask for a roll of the Deployment (`rollout`): a merged model is vLLM's
   base, not an adapter, and `basemodel` serves it under its served name too.

Staging rewrites ``base_model_name_or_path`` in adapter_config.json to vLLM's --model
(`serving.model_dir`). The load API does not need it, but vLLM's filesystem resolver does
(``plugins/lora_resolvers/filesystem_resolver.py::FilesystemResolver``: it accepts an adapter only
when that field equals the server's --model), and the chart points the resolver at the staged
adapters: a request that names a staged adapter before its load call finished is still served.

Each pod's sidecar loads its own vLLM (runtime adapters are per-process state), so every replica,
a rescheduled one included, converges within one poll by itself.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import BigberthaError, ConfigError
from bigbertha.models import loading, registry
from bigbertha.serving import basemodel
from bigbertha.serving.vllm import AdapterRejected, VllmClient, VllmUnavailable

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
#: The aliases the tier serves: the champion, the canary challenger, and the rollback target.
ALIASES = (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS)


@dataclass
class SyncReport:
    """What one pass saw and did (also the sidecar's /status)."""

    aliases: dict[str, str | None] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)  # alias -> served (loaded) name
    loaded: list[str] = field(default_factory=list)  # loaded by this pass
    unloaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # served name -> why not loaded
    errors: dict[str, str] = field(default_factory=dict)  # served name or "roll" -> error
    base: str | None = None  # what this pod serves as its base
    roll: str | None = None  # the base a roll was requested for
    finished_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AdapterSync:
    """Reconciles one vLLM server's adapters with the registry (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        vllm: VllmClient,
        *,
        roll: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.vllm = vllm
        self._roll = roll
        self._model = settings.mlflow.model_name
        self._adapters = Path(settings.serving.adapters_dir)
        # Registered versions never change: what each one is, and what it was trained on.
        self._kinds: dict[str, registry.VersionKind] = {}
        self._bases: dict[str, str | None] = {}
        self._prefix = registry.served_name(self._model, "0")[:-1]  # e.g. "bigbertha-llm-v"

    def aliases(self) -> tuple[str, ...]:
        extra = self.settings.chat.champion_alias
        return ALIASES if not extra or extra in ALIASES else (*ALIASES, extra)

    def sync_once(self) -> SyncReport:
        """One reconcile pass. Raises ServiceUnavailable when the registry or vLLM is down
        (nothing changed), ConfigError when vLLM's runtime-LoRA API is off or refuses our key."""
        report = SyncReport(base=basemodel.served_base(self.settings))
        # 1. The registry first: unreachable, keep everything as it is.
        report.aliases = {
            alias: registry.alias_version(self.settings, alias) for alias in self.aliases()
        }
        loaded = self.vllm.adapters()
        wanted: dict[str, str] = {}  # served name -> version, champion first
        champion = report.aliases.get(self.settings.chat.champion_alias or registry.CHAMPION)
        for version in report.aliases.values():
            if version is None:
                continue
            name = registry.served_name(self._model, version)
            reason = self._why_not(version)
            if reason:
                report.skipped[name] = reason
            elif name not in wanted:
                wanted[name] = version
        if champion is not None:
            first = registry.served_name(self._model, champion)
            wanted = dict(sorted(wanted.items(), key=lambda item: item[0] != first))

        # 2. Stage and load what is wanted and not loaded yet.
        for name, version in wanted.items():
            if name in loaded:
                continue
            try:
                path = self.stage(name, version)
                result = self.vllm.load_adapter(name, str(path))
            except (AdapterRejected, ConfigError) as exc:
                report.errors[name] = str(exc)
                log.error("adapter %s (version %s) not loaded: %s", name, version, exc)
                continue
            except VllmUnavailable:
                raise
            except BigberthaError as exc:  # the registry or storage failed for this one version
                report.errors[name] = str(exc)
                log.warning("adapter %s (version %s): %s; next poll retries", name, version, exc)
                continue
            report.loaded.append(name)
            log.info("adapter %s (version %s) %s", name, version, result)

        # 3. Unload ours that nothing points at any more; drop their staged files.
        for name in sorted(loaded):
            if name.startswith(self._prefix) and name not in wanted:
                self.vllm.unload_adapter(name)
                report.unloaded.append(name)
                log.info("adapter %s unloaded: no alias points at it", name)
        self._clean_staging(keep=set(wanted))

        # 4. The base: a merged champion is served by rolling the tier onto it.
        self._check_base(report, champion)
        now_loaded = set(self.vllm.adapters())
        for alias, version in report.aliases.items():
            if version is not None:
                name = registry.served_name(self._model, version)
                if name in now_loaded or (
                    basemodel.same_ref(report.base, f"models:/{self._model}/{version}")
                ):
                    report.serving[alias] = name
        report.finished_at = time.time()
        return report

    # --- what a version is and whether this pod can serve it as an adapter ------------------

    def _why_not(self, version: str) -> str | None:
        if version not in self._kinds:
            self._kinds[version] = registry.version_kind(self.settings, version)
        if self._kinds[version] == "model":
            return "a merged model: served as the tier's base (after a roll), not as an adapter"
        base = self._trained_on(version)
        served = basemodel.served_base(self.settings)
        if served is not None and base is not None and not basemodel.same_ref(base, served):
            return f"trained on {base}, but this tier serves {served}"
        return None

    def _trained_on(self, version: str) -> str | None:
        if version not in self._bases:
            tags = registry.version_tags(self.settings, version)
            self._bases[version] = tags.get("base_model") or None
        return self._bases[version]

    # --- staging ---------------------------------------------------------------------------

    def stage(self, name: str, version: str) -> Path:
        """The adapter's directory under adapters_dir, written once (atomically) per version."""
        final = self._adapters / name
        if (final / ADAPTER_CONFIG).is_file():
            return final
        self._adapters.mkdir(parents=True, exist_ok=True)
        cache = loading.cache_dir(self.settings)
        source = registry.download_version(self.settings, self._model, version, cache)
        if not (source / ADAPTER_CONFIG).is_file():
            raise AdapterRejected(f"model {self._model} version {version}: no {ADAPTER_CONFIG}")
        # A hidden name: vLLM's resolver never looks a request's model up as ".stage-...".
        tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=self._adapters))
        try:
            for item in source.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
            config = json.loads((tmp / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = self.settings.serving.model_dir
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from a vLLM running as another uid
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            # Staged now (or failed): the download cache is not needed twice.
            shutil.rmtree(cache / self._model / version, ignore_errors=True)
        return final

    def _clean_staging(self, keep: set[str]) -> None:
        if not self._adapters.is_dir():
            return
        for item in self._adapters.iterdir():
            stale_ours = item.name.startswith(self._prefix) and item.name not in keep
            if stale_ours or item.name.startswith(".stage-"):
                shutil.rmtree(item, ignore_errors=True)

    # --- the base model --------------------------------------------------------------------

    def _check_base(self, report: SyncReport, champion: str | None) -> None:
        configured = self.settings.serving.base_model
        if champion is not None and self._kinds.get(champion) == "model":
            wanted: str | None = f"models:/{self._model}/{champion}"
        else:
            wanted = configured
        if report.base is None or wanted is None or basemodel.same_ref(report.base, wanted):
            return
        if self._roll is None:
            report.errors["roll"] = (
                f"this pod serves {report.base} but should serve {wanted}: nothing may roll the "
                "tier (serving.sync.rollOnMergedChampion); roll it by hand"
            )
            log.error("%s", report.errors["roll"])
            return
        try:
            self._roll(wanted)
            report.roll = wanted
        except BigberthaError as exc:
            report.errors["roll"] = str(exc)
            log.error("rolling the tier onto %s failed: %s", wanted, exc)
