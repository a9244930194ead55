"""models.load_causal_lm: local dirs, adapters (save/reload/merge), 4-bit, registry, SmolLM2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bigbertha.core.settings import Settings
from bigbertha.models import loading, registry
from bigbertha.models.loading import pyfunc_model
from tests.models.helpers import logits, make_adapter, mlflow_settings


def test_full_model_directory_loads_in_eval_mode_with_its_name_as_version(tiny_model: Path) -> None:
    model, tokenizer, version = loading.load_causal_lm(str(tiny_model), Settings())
    assert version == "tiny-llama"
    assert not model.training
    assert tokenizer.pad_token is not None
    assert logits(model, tokenizer).shape[-1] == model.config.vocab_size


def test_adapter_save_reload_and_merge_give_the_same_logits(
    tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    trained, tokenizer = make_adapter(tiny_model, tmp_path / "adapter")
    expected = logits(trained, tokenizer)
    base_model, _, _ = loading.load_causal_lm(str(tiny_model), Settings())
    assert not torch.allclose(logits(base_model, tokenizer), expected, atol=1e-3)  # it does adapt

    reloaded, tok2, version = loading.load_causal_lm(str(tmp_path / "adapter"), Settings())
    assert isinstance(reloaded, PeftModel) and version == "adapter"
    torch.testing.assert_close(logits(reloaded, tok2), expected, atol=1e-5, rtol=1e-4)

    merged_dir = loading.save_merged(reloaded, tok2, tmp_path / "merged")
    merged, tok3, _ = loading.load_causal_lm(str(merged_dir), Settings())
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(logits(merged, tok3), expected, atol=1e-4, rtol=1e-3)


def test_four_bit_nf4_loading_works_on_cpu(tiny_model: Path) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit

    full, tokenizer, _ = loading.load_causal_lm(str(tiny_model), Settings())
    quant, _, _ = loading.load_causal_lm(str(tiny_model), Settings(), quantize=True)
    layers = [m for m in quant.modules() if isinstance(m, Linear4bit)]
    assert layers, "no 4-bit linear layers after quantised loading"
    assert layers[0].weight.quant_type == "nf4"
    q, f = logits(quant, tokenizer), logits(full, tokenizer)
    assert torch.isfinite(q).all()
    # Quantisation error is small next to the logits themselves: same model, fewer bits.
    assert (q - f).abs().mean() < 0.25 * f.abs().mean()


def test_bad_references_fail_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(loading.ModelNotFound, match="no such file"):
        loading.resolve(str(tmp_path / "missing" / "model"), Settings())
    (tmp_path / "empty").mkdir()
    with pytest.raises(loading.ModelNotFound, match="no config.json"):
        loading.resolve(str(tmp_path / "empty"), Settings())
    assert loading.resolve("HuggingFaceTB/SmolLM2-135M", Settings()).kind == "hub"


@pytest.mark.slow
def test_an_adapter_in_object_storage_loads_like_the_local_one(
    s3_server: Any,
    tiny_model: Path,
    tmp_path: Path,
    clean_env: Path,
) -> None:
    import torch

    from bigbertha.core import storage

    s3_settings = Settings(
        s3={key: s3_server.extra[key] for key in ("endpoint", "access_key", "secret_key")}
    )
    trained, tokenizer = make_adapter(tiny_model, tmp_path / "adapter", seed=3)
    storage.upload_path(s3_settings, tmp_path / "adapter", "s3://runs/wf-2/adapter")
    model, tok, version = loading.load_causal_lm("s3://runs/wf-2/adapter", s3_settings)
    assert version == "runs_wf-2_adapter"
    torch.testing.assert_close(logits(model, tok), logits(trained, tokenizer), atol=1e-5, rtol=1e-4)


def test_registry_version_loads_back_the_registered_adapter(
    tiny_model: Path, tmp_path: Path, mlflow_server: Any, clean_env: Path
) -> None:
    import torch

    settings = mlflow_settings(mlflow_server)
    trained, tokenizer = make_adapter(tiny_model, tmp_path / "adapter", seed=2)
    assert registry.alias_version(settings, "champion") is None  # no model registered yet
    version = registry.register_challenger(
        settings,
        tmp_path / "adapter",
        {"base_model": str(tiny_model), "dataset_hash": "abc"},
        pyfunc_model(),
    )
    tags = registry.version_tags(settings, version)
    assert tags["base_model"] == str(tiny_model) and tags["dataset_hash"] == "abc"

    registry.promote(settings, version)
    assert registry.alias_version(settings, "champion") == version
    ref = f"models:/{settings.mlflow.model_name}@champion"
    model, tok, loaded_version = loading.load_causal_lm(ref, settings)
    assert loaded_version == version
    torch.testing.assert_close(logits(model, tok), logits(trained, tokenizer), atol=1e-5, rtol=1e-4)
    # The same version through plain MLflow pyfunc (what the logged pip_requirements serve).
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.model_name}/{version}")
    answer = pyfunc.predict(["what color is the sky ?"], params={"max_new_tokens": 3})
    prompt = tok("what color is the sky ?", return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    greedy = tok.decode(ids[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    # The registered version's own greedy answer, as long as asked: its signature declares the
    # max_new_tokens param (MLflow drops params a signature does not declare).
    assert answer == [greedy] and greedy


def test_registry_alias_that_is_not_set_is_a_clear_error(
    mlflow_server: Any, clean_env: Path
) -> None:
    settings = mlflow_settings(mlflow_server)
    with pytest.raises(loading.ModelNotFound, match="alias 'champion' is not set"):
        loading.resolve(f"models:/{settings.mlflow.model_name}@champion", settings)


@pytest.mark.slow
def test_smollm2_loads_from_the_packaged_gguf_and_answers(clean_env: Path) -> None:
    import torch

    model, tokenizer, version = loading.load_causal_lm("smollm2", Settings())
    assert version == "smollm2"
    # Plain float weights: nothing marks them GGUF-quantized, so trl can train them.
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    # The dequantised copy is kept, and the next process loads the same model from it.
    cached = loading.cache_dir(Settings()) / "gguf" / Path(loading.SMOLLM2_GGUF).stem
    assert (cached / ".complete").is_file()
    again, _, version_again = loading.load_causal_lm("smollm2", Settings())
    assert version_again == "smollm2"
    probe = tokenizer("The sky is", return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**probe).logits, again(**probe).logits, atol=1e-5)
    assert model.config.model_type == "llama"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "paris" in answer.lower()
