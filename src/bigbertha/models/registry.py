"""Where models and training artifacts are kept: the MLflow model registry and object storage.

Registry conventions (see `models` for how a version is stored and loaded):
- one registered model, ``mlflow.model_name``; a challenger is a new version with lineage tags
  (``base_model``, ``dataset_hash``, ``alert_name``, ``alert_labels``, ``workflow_name``);
- the ``champion`` alias is what the chatbot serves; ``previous`` is the champion before it;
  ``challenger`` is a version that passed the offline gate and serves a canary share of new
  conversations until the canary promotes it to champion or retires it (the alias removed);
- the gate's decision and numbers are version tags (``gate.decision``, ``gate.reason``,
  ``gate.<metric>.challenger`` / ``gate.<metric>.champion``).
A version is an MLflow pyfunc model whose ``adapter`` artifact (`ADAPTER_ARTIFACT`) is the
adapter directory; `bigbertha.models.loading` loads it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bigbertha.core.errors import BigberthaError, ConfigError, ServiceUnavailable
from bigbertha.models import tracking

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"  # passed the offline gate; serves a canary share before champion
PREVIOUS = "previous"
EXPERIMENT = "bigbertha-retrain"
PREVIOUS_TAG = "previous_champion"
# The artifact of a registered version that holds the adapter (or model) directory.
ADAPTER_ARTIFACT = "adapter"
# What a registered challenger needs to load anywhere (exact versions of this environment).
#: What a registered version holds: a LoRA adapter, or a full (merged) model directory.
VersionKind = Literal["adapter", "model"]
_RUNTIME_PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "gguf")


# ---------------------------------------------------------------------------------------------
# MLflow registry


def served_name(model_name: str, version: str) -> str:
    """The name a registered version is served under (an inference tier's adapter name, the
    `model` of an OpenAI-compatible request): lower-case letters, digits and dashes only, so it
    is safe as a path component and a Kubernetes-style name."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{model_name}-v{version}".lower()).strip("-")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise ConfigError(f"model {model_name!r} version {version!r}: no valid served name")
    return name


def limit_retries() -> None:
    """Fail fast on an unreachable MLflow: its client retries for minutes by default, but a
    polling process (the chatbot, the tier's sidecar) asks again next poll and must keep
    serving while MLflow is down. Explicit MLFLOW_HTTP_REQUEST_* settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def client(settings: Settings) -> Any:
    """An MlflowClient for the configured tracking server (also the registry)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)
    return MlflowClient(settings.mlflow.tracking_uri, settings.mlflow.tracking_uri)


class MlflowUnavailable(ServiceUnavailable):
    """The tracking server or registry stayed unreachable after the client's bounded retries."""


def _unavailable(settings: Settings, exc: Exception) -> MlflowUnavailable:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return MlflowUnavailable(f"MLflow at {settings.mlflow.tracking_uri}: {first}")


@contextlib.contextmanager
def mlflow_errors(settings: Settings) -> Iterator[None]:
    """Turn MLflow client failures (after its own HTTP retries) into ServiceUnavailable."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        raise _unavailable(settings, exc) from exc


def alias_version(
    settings: Settings, alias: str = CHAMPION, *, name: str | None = None
) -> str | None:
    """The version number an alias points at, or None when the alias or model does not exist.

    Raises ServiceUnavailable when the registry cannot be reached.
    """
    from mlflow.exceptions import MlflowException, RestException

    name = name or settings.mlflow.model_name
    try:
        mv = client(settings).get_model_version_by_alias(name, alias)
    except RestException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise _unavailable(settings, exc) from exc
    except MlflowException as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise _unavailable(settings, exc) from exc
    except OSError as exc:
        raise _unavailable(settings, exc) from exc
    return str(mv.version)


def download_version(settings: Settings, name: str, version: str, cache_root: Path) -> Path:
    """Download a registered version once; return its ``adapter`` (or model) directory."""
    import mlflow.artifacts

    final = cache_root / name / str(version)
    if not (final / ".complete").is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        client(settings)  # sets the tracking/registry URIs download_artifacts uses
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_root))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp)
            )
            (tmp / ".complete").touch()
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, BigberthaError):
                raise
            raise _unavailable(settings, exc) from exc
    return _artifact_dir(final)


def version_kind(settings: Settings, version: str, *, name: str | None = None) -> VersionKind:
    """Whether a registered version holds a LoRA adapter or a full (e.g. merged) model, read
    from its MLmodel and one directory listing, without downloading any weights."""
    import yaml
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    name = name or settings.mlflow.model_name
    client(settings)  # sets the registry URI the models:/ repository resolves against
    with mlflow_errors(settings):
        repo = get_artifact_repository(f"models:/{name}/{version}")
        top = {Path(f.path).name for f in repo.list_artifacts("")}
        path = ""
        if "MLmodel" in top:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(repo.download_artifacts("MLmodel", tmp))
                doc = yaml.safe_load(local.read_text(encoding="utf-8")) or {}
            artifacts = doc.get("flavors", {}).get("python_function", {}).get("artifacts", {})
            path = str(artifacts.get(ADAPTER_ARTIFACT, {}).get("path") or "")
        files = {Path(f.path).name for f in repo.list_artifacts(path)} if path else top
    if "adapter_config.json" in files:
        return "adapter"
    if "config.json" in files:
        return "model"
    raise ConfigError(
        f"model {name} version {version}: holds neither adapter_config.json nor config.json"
    )


def _artifact_dir(model_dir: Path) -> Path:
    """The ``adapter`` artifact of a pyfunc model directory (MLmodel names its path)."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        doc = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        artifacts = doc.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        path = artifacts.get(ADAPTER_ARTIFACT, {}).get("path")
        if path and (model_dir / path).is_dir():
            return model_dir / path
    return model_dir


def pip_requirements() -> list[str]:
    """Exact pins of the packages a registered model needs to load."""
    pins = []
    for package in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def register_challenger(
    settings: Settings, adapter_dir: Path, tags: Mapping[str, str], python_model: Any
) -> str:
    """Log `adapter_dir` as the pyfunc `python_model` in a run and register it; return the new
    version. (`bigbertha.models.loading.pyfunc_model()` is the model class that loads it.)"""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    name = settings.mlflow.model_name
    mlflow_client = client(settings)
    try:
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(
            run_name=f"register-{tags.get('workflow_name') or 'local'}", tags=tracking.owner_tags()
        ) as run:
            mlflow.set_tags({"step": "register", **{k: v for k, v in tags.items() if v}})
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                artifacts={ADAPTER_ARTIFACT: str(adapter_dir)},
                pip_requirements=pip_requirements(),
                # Prompts in, completions out; without a declared params schema MLflow drops
                # predict()'s params, so max_new_tokens would be silently ignored.
                signature=infer_signature(
                    ["a prompt"], ["a completion"], params={"max_new_tokens": 64}
                ),
            )
        mv = mlflow.register_model(info.model_uri, name, tags={**tags, "run_id": run.info.run_id})
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise _unavailable(settings, exc) from exc
    with mlflow_errors(settings):
        mlflow_client.update_model_version(
            name, mv.version, description=f"challenger from {tags.get('base_model', '?')}"
        )
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def set_tags(settings: Settings, version: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a version of the registered model (values stringified)."""
    mlflow_client = client(settings)
    with mlflow_errors(settings):
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(
                settings.mlflow.model_name, version, key, str(value)
            )


def versions(settings: Settings) -> list[Any]:
    """Every version of the registered model (MLflow ModelVersions with their tags; a search
    leaves their aliases out: see `aliased_versions`)."""
    name = settings.mlflow.model_name
    with mlflow_errors(settings):
        return list(client(settings).search_model_versions(f"name = '{name}'"))


def aliased_versions(settings: Settings) -> set[str]:
    """The versions some alias (champion, previous, ...) points at; empty without a model."""
    from mlflow.exceptions import MlflowException

    try:
        model = client(settings).get_registered_model(settings.mlflow.model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return set()
        raise _unavailable(settings, exc) from exc
    except OSError as exc:
        raise _unavailable(settings, exc) from exc
    return {str(v) for v in (model.aliases or {}).values()}


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    """The tags of a version of the registered model."""
    with mlflow_errors(settings):
        mv = client(settings).get_model_version(settings.mlflow.model_name, version)
    return dict(mv.tags)


def promote(settings: Settings, version: str) -> str | None:
    """Point ``champion`` at `version`; the old champion keeps ``previous``. Returns it."""
    name = settings.mlflow.model_name
    mlflow_client = client(settings)
    old = alias_version(settings, CHAMPION)
    if old == version:
        return old
    with mlflow_errors(settings):
        if old is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, old)
            mlflow_client.set_model_version_tag(name, version, PREVIOUS_TAG, old)
        # The champion moves last: a failure above leaves it where it was.
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    return old


def set_challenger(settings: Settings, version: str) -> str | None:
    """Point ``challenger`` at `version`; returns the challenger it replaced, if another."""
    old = alias_version(settings, CHALLENGER)
    if old != version:
        with mlflow_errors(settings):
            client(settings).set_registered_model_alias(
                settings.mlflow.model_name, CHALLENGER, version
            )
    return old if old != version else None


def clear_challenger(settings: Settings, version: str) -> bool:
    """Remove ``challenger`` if it still points at `version` (a newer challenger keeps it);
    True when it was removed now."""
    if alias_version(settings, CHALLENGER) != version:
        return False
    with mlflow_errors(settings):
        client(settings).delete_registered_model_alias(settings.mlflow.model_name, CHALLENGER)
    return True


def rollback(settings: Settings) -> tuple[str, str]:
    """Move ``champion`` back to ``previous``; returns (from_version, to_version).

    ``previous`` then moves one step further back (the restored version's own predecessor),
    or is removed when there is none, so repeated rollbacks walk back through history.
    """
    name = settings.mlflow.model_name
    mlflow_client = client(settings)
    current = alias_version(settings, CHAMPION)
    target = alias_version(settings, PREVIOUS)
    if target is None or current is None:
        raise ConfigError(
            f"cannot roll back {name}: no '{PREVIOUS}' alias (nothing was promoted over a champion)"
        )
    with mlflow_errors(settings):
        mlflow_client.set_registered_model_alias(name, CHAMPION, target)
        mlflow_client.set_model_version_tag(name, current, "rolled_back", "true")
        before = version_tags(settings, target).get(PREVIOUS_TAG)
        if before and before != current:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            mlflow_client.delete_registered_model_alias(name, PREVIOUS)
    return current, target
