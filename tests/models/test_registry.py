"""registry: artifacts moving through object storage (s3://) and local paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bigbertha.core import storage
from bigbertha.core.errors import ConfigError
from bigbertha.core.settings import Settings
from bigbertha.models import loading, registry
from tests.models.test_loading import logits, make_adapter, tiny_model  # noqa: F401


@pytest.fixture
def s3_settings(s3_server: Any) -> Settings:
    return Settings(
        s3={
            "endpoint": s3_server.extra["endpoint"],
            "access_key": s3_server.extra["access_key"],
            "secret_key": s3_server.extra["secret_key"],
        }
    )


def test_s3_uris_are_checked() -> None:
    assert storage.split_s3("s3://runs/wf-1/adapter/") == ("runs", "wf-1/adapter/")
    with pytest.raises(ConfigError, match="not an s3://bucket/key URI"):
        storage.split_s3("s3:///key")
    with pytest.raises(ConfigError, match="s3.endpoint is not set"):
        storage.read_bytes(Settings(), "s3://bucket/key")
    with pytest.raises(ConfigError, match="cannot read"):
        storage.read_bytes(Settings(), "/no/such/file.jsonl")


def test_a_directory_round_trips_through_object_storage(
    s3_settings: Settings, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "nested" / "b.bin").write_bytes(b"\x00\x01")
    storage.upload_path(s3_settings, src, "s3://artifacts/wf-1/adapter")
    out = storage.download_prefix(s3_settings, "s3://artifacts/wf-1/adapter/", tmp_path / "out")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "a.json",
        "nested/b.bin",
    ]
    assert (out / "nested" / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ConfigError, match="no objects under this prefix"):
        storage.download_prefix(s3_settings, "s3://artifacts/nothing/", tmp_path / "none")


@pytest.mark.slow
def test_an_adapter_in_object_storage_loads_like_the_local_one(
    s3_settings: Settings,
    tiny_model: Path,  # noqa: F811
    tmp_path: Path,
    clean_env: Path,
) -> None:
    import torch

    trained, tokenizer = make_adapter(tiny_model, tmp_path / "adapter", seed=3)
    storage.upload_path(s3_settings, tmp_path / "adapter", "s3://runs/wf-2/adapter")
    model, tok, version = loading.load_causal_lm("s3://runs/wf-2/adapter", s3_settings)
    assert version == "runs_wf-2_adapter"
    torch.testing.assert_close(logits(model, tok), logits(trained, tokenizer), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("model", "version", "expected"),
    [("bigbertha-llm", "3", "bigbertha-llm-v3"), ("My_LLM.v2", "12", "my-llm-v2-v12")],
)
def test_served_names_are_safe_path_and_dns_labels(model: str, version: str, expected: str) -> None:
    assert registry.served_name(model, version) == expected


def test_a_name_that_cannot_be_served_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="no valid served name"):
        registry.served_name("x" * 80, "1")
