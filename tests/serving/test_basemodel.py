"""The init step's choice of base model and its refusals (the downloads themselves run against
real S3 and MLflow in test_adapters.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core.errors import ConfigError, ServiceUnavailable
from bigbertha.core.settings import Settings
from bigbertha.serving import basemodel


def _settings(tmp_path: Path, **serving: str) -> Settings:
    return Settings(
        serving={
            "served_name": "llama-2-7b-chat",
            "model_dir": str(tmp_path / "models" / "base"),
            **serving,
        }
    )


def test_the_override_of_a_roll_wins_over_the_configured_base(tmp_path: Path) -> None:
    settings = _settings(tmp_path, base_model="s3://models/llama/")
    assert basemodel.wanted_ref(settings) == "s3://models/llama/"
    rolled = _settings(tmp_path, base_model="s3://models/llama/", base_override="models:/m/4")
    assert basemodel.wanted_ref(rolled) == "models:/m/4"
    assert basemodel.served_names(rolled, "models:/m/4") == ["llama-2-7b-chat", "m-v4"]
    assert basemodel.served_names(settings, "s3://models/llama/") == ["llama-2-7b-chat"]
    assert basemodel.same_ref("s3://models/llama", "s3://models/llama/")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("models:/m@champion", "pin a registry version"),
        ("/mnt/weights", "not a Hugging Face id, s3:// prefix or registry pin"),
        ("org/repo/extra", "not a Hugging Face id"),
    ],
)
def test_a_reference_it_cannot_fetch_is_a_config_error(
    tmp_path: Path, ref: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        basemodel.fetch(_settings(tmp_path, base_model=ref))
    assert not (tmp_path / "models" / "base").exists()


def test_without_a_base_or_a_served_name_it_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BIGBERTHA_SERVING__BASE_MODEL"):
        basemodel.fetch(_settings(tmp_path))
    no_name = Settings(serving={"base_model": "org/model", "model_dir": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="BIGBERTHA_SERVING__SERVED_NAME"):
        basemodel.fetch(no_name)


def test_the_hub_offline_is_transient_and_points_at_object_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ServiceUnavailable, match="serve from object storage instead"):
        basemodel.fetch(_settings(tmp_path, base_model="meta-llama/Llama-2-7b-chat-hf"))


def test_the_command_prints_where_the_model_is(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete earlier download is kept: the command only rewrites the args file."""
    model_dir = tmp_path / "models" / "base"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (tmp_path / "models" / basemodel.MARKER).write_text('{"ref": "s3://models/llama/"}')
    env = {
        "BIGBERTHA_SERVING__BASE_MODEL": "s3://models/llama",
        "BIGBERTHA_SERVING__SERVED_NAME": "llama",
        "BIGBERTHA_SERVING__MODEL_DIR": str(model_dir),
    }
    result = CliRunner().invoke(app, ["fetch-base-model"], env=env)
    assert result.exit_code == 0, result.output
    assert f'"model_dir": "{model_dir}"' in result.stdout
    args = yaml.safe_load((tmp_path / "models" / basemodel.VLLM_ARGS).read_text())
    assert args == {"served-model-name": ["llama"]}
