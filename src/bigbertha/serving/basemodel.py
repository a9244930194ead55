"""The tier's base model on local disk before vLLM starts: `bigbertha fetch-base-model`, the init
container of each vLLM pod.

    bigbertha fetch-base-model        # serving.base_model -> serving.model_dir

vLLM serves the directory `serving.model_dir` (its --model), filled from one reference:

- `serving.base_override`, when the pod was rolled for a merged champion: ``models:/<name>/<v>``
  (the sidecar sets it through a pod-template annotation, see `rollout`);
- else `serving.base_model`: ``s3://bucket/prefix/`` (air-gapped: the weights sit in MinIO) or a
  Hugging Face id (downloaded here with the token in HF_TOKEN, so vLLM itself runs offline).

Beside the directory it writes ``vllm.yaml``, the args file vLLM reads with ``--config``
(``vllm/utils/argparse_utils.py::FlexibleArgumentParser.load_config_file`` in 0.33.0), holding
the names the model answers to: `serving.served_name` first (what the chatbot asks for, the
``model_name`` label of vLLM's metrics), plus the registry version's served name when the base is
a merged champion, so the chatbot finds the champion by that name as it finds an adapter. Last it
writes the marker ``.bigbertha-base.json`` naming the reference; the sidecar reads it to load only
adapters trained on this base, and a restarted init container keeps a complete download.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.models import registry

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

MARKER = ".bigbertha-base.json"
VLLM_ARGS = "vllm.yaml"
_REGISTRY_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
# What vLLM reads from a Hub repository: configs, tokenizer, safetensors weights. Pickled
# duplicates (*.bin, *.pt), other frameworks and "original/" checkpoints would double the
# download; *.bin is fetched only when a repository has no safetensors.
_HUB_SKIP = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "original/*"]


def same_ref(a: str | None, b: str | None) -> bool:
    """Two references to the same model (an s3:// prefix with or without its trailing slash)."""
    return a is not None and b is not None and a.rstrip("/") == b.rstrip("/")


def wanted_ref(settings: Settings) -> str:
    """The reference this pod must serve: the roll's override, else serving.base_model."""
    ref = settings.serving.base_override or settings.serving.base_model
    if not ref:
        raise ConfigError(
            "serving.base_model is not set: set BIGBERTHA_SERVING__BASE_MODEL to a Hugging Face "
            "id or an s3://bucket/prefix/ holding the base model (chart: serving.model.ref)"
        )
    return ref.strip()


def marker_path(settings: Settings) -> Path:
    return Path(settings.serving.model_dir).parent / MARKER


def served_base(settings: Settings) -> str | None:
    """The reference the base on disk was fetched from; None before the init step ran."""
    try:
        doc = json.loads(marker_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    return str(ref) if ref else None


def served_names(settings: Settings, ref: str) -> list[str]:
    """The names vLLM serves the base under: the configured one, then a merged champion's."""
    first = settings.serving.served_name
    if not first:
        raise ConfigError(
            "serving.served_name is not set: set BIGBERTHA_SERVING__SERVED_NAME to the name the "
            "chatbot asks the tier for (chart: serving.model.servedName)"
        )
    names = [first]
    match = _REGISTRY_VERSION.match(ref)
    if match:
        names.append(registry.served_name(match["name"], match["version"]))
    return names


def fetch(settings: Settings) -> Path:
    """Put the wanted base model into serving.model_dir (kept if already there); return it."""
    ref = wanted_ref(settings)
    target = Path(settings.serving.model_dir)
    args = {"served-model-name": served_names(settings, ref)}
    if same_ref(served_base(settings), ref) and (target / "config.json").is_file():
        log.info("base model %s is already in %s", ref, target)
    else:
        marker_path(settings).unlink(missing_ok=True)
        staging = target.parent / ".download"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.monotonic()
        source = _download(settings, ref, staging)
        if not (source / "config.json").is_file():
            raise ConfigError(f"base model {ref}: holds no config.json, so it is not a model")
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)  # the same volume: the model appears whole or not at all
        shutil.rmtree(staging, ignore_errors=True)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        log.info(
            "fetched base model %s into %s (%.1f GB in %.0fs)",
            ref,
            target,
            size / 1e9,
            time.monotonic() - started,
        )
    (target.parent / VLLM_ARGS).write_text(yaml.safe_dump(args), encoding="utf-8")
    marker_path(settings).write_text(json.dumps({"ref": ref}), encoding="utf-8")
    return target


def _download(settings: Settings, ref: str, staging: Path) -> Path:
    match = _REGISTRY_VERSION.match(ref)
    if match:
        return registry.download_version(settings, match["name"], match["version"], staging)
    if ref.startswith("models:/"):
        raise ConfigError(f"base model {ref}: pin a registry version as models:/<name>/<version>")
    if storage.is_s3(ref):
        return storage.download_prefix(settings, ref, staging / "model")
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ConfigError(f"base model {ref}: not a Hugging Face id, s3:// prefix or registry pin")
    return _from_hub(ref, staging / "model")


def _from_hub(repo_id: str, dest: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        snapshot_download(repo_id, local_dir=dest, ignore_patterns=_HUB_SKIP)
        if not any(dest.glob("*.safetensors")):
            snapshot_download(repo_id, local_dir=dest, allow_patterns=["*.bin"])
    except GatedRepoError as exc:
        raise ConfigError(
            f"base model {repo_id}: gated on the Hub: put a token with access in the Secret "
            "huggingface.existingSecret names"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ConfigError(f"base model {repo_id}: no such repository on the Hub") from exc
    except LocalEntryNotFoundError as exc:  # offline, or the Hub unreachable
        raise ServiceUnavailable(
            f"base model {repo_id}: the Hugging Face Hub is unreachable (HF_HUB_OFFLINE or no "
            "egress): serve from object storage instead (docs/air-gapped.md)"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ServiceUnavailable(f"base model {repo_id}: download failed: {exc}") from exc
    return dest
