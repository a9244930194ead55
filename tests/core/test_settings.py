"""Settings: env, YAML file and flags, their sources, masking, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bigbertha.cli import app
from bigbertha.core import settings as settings_mod
from bigbertha.core.errors import ConfigError

runner = CliRunner()


def test_defaults_point_at_embedded_local_stores(clean_env):
    s = settings_mod.load()
    assert s.milvus.uri.endswith(".bigbertha/milvus.db")
    assert s.mlflow.tracking_uri.startswith("sqlite:///")
    assert s.redis.url is None and s.s3.endpoint is None


def test_env_file_and_flag_priority(clean_env, monkeypatch):
    config = clean_env / "bb.yaml"
    config.write_text("milvus: {uri: from-file, collection: filecoll}\nexporter: {port: 9000}\n")
    monkeypatch.setenv("BIGBERTHA_MILVUS__URI", "http://milvus:19530")
    s = settings_mod.load(config, {"exporter": {"port": 9100}})
    assert s.milvus.uri == "http://milvus:19530"  # env beats file
    assert s.milvus.collection == "filecoll"  # file beats default, merged per key
    assert s.exporter.port == 9100  # flag beats file
    origin = settings_mod.sources(s, config, {"exporter": {"port": 9100}})
    assert origin["milvus"]["uri"] == "env:BIGBERTHA_MILVUS__URI"
    assert origin["milvus"]["collection"] == f"file:{config}"
    assert origin["exporter"]["port"] == "flag"
    assert origin["chat"]["port"] == "default"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BIGBERTHA_EXPORTER__PORT", "not-a-port", "exporter.port (from BIGBERTHA_EXPORTER__PORT)"),
        ("BIGBERTHA_EXPORTER__PORT", "70000", "less than or equal to 65535"),
        ("BIGBERTHA_LLM__BACKEND", "gpt", "llm.backend"),
        ("BIGBERTHA_MILVUS__COLLECTION", "bad name!", "milvus.collection"),
        ("BIGBERTHA_MILVUS__URL", "typo", "milvus.url"),
    ],
)
def test_bad_env_value_is_one_clear_line_and_exit_2(clean_env, monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid setting")
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_two_bad_fields_give_two_lines(clean_env, monkeypatch):
    monkeypatch.setenv("BIGBERTHA_EXPORTER__PORT", "x")
    monkeypatch.setenv("BIGBERTHA_CHAT__TOP_K", "0")
    with pytest.raises(ConfigError) as info:
        settings_mod.load()
    assert len(str(info.value).splitlines()) == 2


def test_missing_or_malformed_config_file(clean_env):
    result = runner.invoke(app, ["--config", "nope.yaml", "config", "show"])
    assert result.exit_code == 2 and "nope.yaml: not found" in result.stderr
    Path("bad.yaml").write_text("- a\n- b\n")
    result = runner.invoke(app, ["--config", "bad.yaml", "config", "show"])
    assert result.exit_code == 2 and "top level must be a mapping" in result.stderr


def test_config_show_json_masks_secrets_and_names_sources(clean_env, monkeypatch):
    monkeypatch.setenv("BIGBERTHA_S3__SECRET_KEY", "hunter2")
    monkeypatch.setenv("BIGBERTHA_S3__ENDPOINT", "minio:9000")
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["s3"]["secret_key"] == {"value": "***", "source": "env:BIGBERTHA_S3__SECRET_KEY"}
    assert doc["s3"]["endpoint"]["value"] == "minio:9000"
    assert doc["mlflow"]["model_name"] == {"value": "bigbertha-llm", "source": "default"}
    assert "hunter2" not in result.output


def test_config_show_text(clean_env, monkeypatch):
    monkeypatch.setenv("BIGBERTHA_REDIS__URL", "redis://:pw@redis:6379/0")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    assert "[redis]" in result.stdout
    assert "url = redis://:***@redis:6379/0    # env:BIGBERTHA_REDIS__URL" in result.stdout
    assert "pw@" not in result.stdout


def test_installed_console_script(clean_env):
    bigbertha = Path(sys.executable).parent / "bigbertha"
    out = subprocess.run([str(bigbertha), "version"], capture_output=True, text=True, check=True)
    from bigbertha import __version__

    assert out.stdout.strip() == __version__


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("env", ["default", "dev", "local", "prod", "demo"])
def test_settings_the_chart_renders_are_settings_the_code_accepts(clean_env, monkeypatch, env):
    """Every BIGBERTHA_* value of the chart's settings ConfigMap parses with the code's types."""
    from bigbertha.local import chart
    from tests.chart.render import cluster_values

    files = [] if env == "default" else [ROOT / "values" / f"{env}.yaml"]
    if env == "demo":
        files.insert(0, ROOT / "values" / "local.yaml")
    # prod names its API server's addresses in gitops/environments (cluster_values), not values/.
    overrides = {"secrets": {"generate": True}, **cluster_values("prod")} if env == "prod" else None
    objects = chart.render(files, overrides)
    (configmap,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings")
    ]
    for name, value in configmap["data"].items():
        monkeypatch.setenv(name, value)
    loaded = settings_mod.load()
    assert loaded.ingest.max_bytes == int(float(configmap["data"]["BIGBERTHA_INGEST__MAX_BYTES"]))
    assert "e+" not in configmap["data"]["BIGBERTHA_INGEST__MAX_BYTES"]


def test_values_schema_embeds_the_settings_schema():
    """values.schema.json's `settings` block is generated from the models; regenerate on drift:
    python -c 'import bigbertha.core.settings as s, json; print(json.dumps(s.values_schema()))'."""
    schema = json.loads((ROOT / "values.schema.json").read_text())
    assert schema["properties"]["settings"] == settings_mod.values_schema()


def test_values_schema_keeps_secrets_and_wiring_out_of_values():
    sections = settings_mod.values_schema()["properties"]
    assert "url" not in sections["redis"]["properties"]  # a Secret, never a value
    assert "secret_key" not in sections["s3"]["properties"]
    assert "uri" not in sections["milvus"]["properties"]  # the chart wires it
    assert sections["finetune"]["properties"]["data"]["type"] == "array"


def test_local_paths_become_absolute_where_settings_are_read(clean_env, monkeypatch):
    # A service started in its own working directory must find the same files (issue 13).
    (clean_env / "adapters" / "mine").mkdir(parents=True)
    monkeypatch.setenv("BIGBERTHA_HOME", "state")
    monkeypatch.setenv("BIGBERTHA_MILVUS__URI", "data/milvus.db")
    monkeypatch.setenv("BIGBERTHA_MLFLOW__TRACKING_URI", "sqlite:///runs/mlflow.db")
    monkeypatch.setenv("BIGBERTHA_FINETUNE__DATA", '["curated.jsonl", "s3://bucket/key.jsonl"]')
    monkeypatch.setenv("BIGBERTHA_FINETUNE__BASE_MODEL", "adapters/mine")
    monkeypatch.setenv("BIGBERTHA_LLM__MODEL", "./adapters/mine")
    monkeypatch.setenv("BIGBERTHA_EVALUATE__REPORT", "~/eval.json")
    s = settings_mod.load(overrides={"evaluate": {"data": "held-out.jsonl"}})
    here = str(clean_env)
    assert s.milvus.uri == f"{here}/data/milvus.db"
    assert s.mlflow.tracking_uri == f"sqlite:///{here}/runs/mlflow.db"
    assert s.finetune.data == [f"{here}/curated.jsonl", "s3://bucket/key.jsonl"]
    assert s.finetune.base_model == s.llm.model == f"{here}/adapters/mine"
    assert s.evaluate.data == f"{here}/held-out.jsonl"  # a flag, resolved the same way
    assert s.evaluate.report == str(Path("~/eval.json").expanduser())
    # Defaults under BIGBERTHA_HOME, read when settings load (not at import).
    assert s.finetune.output == f"{here}/state/finetune"
    assert settings_mod.home() == clean_env / "state"


URIS = ["models:/bigbertha-llm@champion", "s3://artifacts/adapter", "http://milvus:19530", ""]


@pytest.mark.parametrize("value", [*URIS, "sqlite:////abs/mlflow.db", "sqlite:///:memory:"])
def test_uris_are_not_paths(clean_env, value):
    assert settings_mod.absolute_location(value) == value


@pytest.mark.parametrize("value", [*URIS, "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_model_names_are_not_paths_unless_they_exist_here(clean_env, value):
    assert settings_mod.absolute_model_ref(value) == value
    if value and "://" not in value and not value.startswith("models:/"):
        (clean_env / value).mkdir(parents=True)  # a local directory of that name wins
        assert settings_mod.absolute_model_ref(value) == str(clean_env / value)


def test_the_flat_retrieval_names_of_an_earlier_release_still_work(clean_env, monkeypatch):
    # Values files and env vars written for chat.retrieval_mode & co. keep their meaning.
    monkeypatch.setenv("BIGBERTHA_CHAT__RETRIEVAL_MODE", "dense")
    monkeypatch.setenv("BIGBERTHA_CHAT__RETRIEVAL", json.dumps({"mode": "hybrid", "rrf_k": 30}))
    with pytest.warns(FutureWarning, match="chat.retrieval_mode is now chat.retrieval.mode"):
        s = settings_mod.load()
    assert s.chat.retrieval.mode == "dense"  # the old name, set by the user, wins
    assert s.chat.retrieval.rrf_k == 30  # the nested block's other keys stay
    monkeypatch.delenv("BIGBERTHA_CHAT__RETRIEVAL_MODE")
    monkeypatch.setenv("BIGBERTHA_CHAT__RETRIEVAL__CANDIDATES", "12")
    s = settings_mod.load()
    assert (s.chat.retrieval.mode, s.chat.retrieval.candidates) == ("hybrid", 12)
    with pytest.raises(ConfigError, match="retrieval.mode"):
        settings_mod.load(overrides={"chat": {"retrieval": {"mode": "sparse"}}})
    # The chart accepts both spellings; the old one is marked deprecated.
    chat = settings_mod.values_schema()["properties"]["chat"]["properties"]
    assert chat["retrieval"]["properties"]["mode"]["enum"] == ["dense", "hybrid"]
    assert chat["retrieval_mode"]["deprecated"] is True


def test_config_show_names_each_nested_setting_and_where_it_came_from(clean_env, monkeypatch):
    monkeypatch.setenv("BIGBERTHA_CHAT__RETRIEVAL__MODE", "dense")
    monkeypatch.setenv("BIGBERTHA_CHAT__RERANK_DIR", "/srv/reranker")  # the earlier name
    with pytest.warns(FutureWarning, match="chat.rerank_dir is now chat.retrieval.rerank_dir"):
        result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    chat = json.loads(result.stdout[result.stdout.index("{") :])["chat"]
    assert chat["retrieval.mode"] == {
        "value": "dense",
        "source": "env:BIGBERTHA_CHAT__RETRIEVAL__MODE",
    }
    assert chat["retrieval.rerank_dir"] == {
        "value": "/srv/reranker",
        "source": "env:BIGBERTHA_CHAT__RERANK_DIR",
    }
    assert chat["retrieval.rrf_k"] == {"value": 60, "source": "default"}


def test_an_old_values_file_keeps_its_retrieval_through_the_chart(clean_env, monkeypatch):
    # `helm upgrade` with a values file of the last release: the flat name passes the chart's
    # schema and overrides the chart's nested default in the process that reads the ConfigMap.
    from bigbertha.local import chart

    old = {"settings": {"chat": {"retrieval_mode": "dense", "retrieval": {"rrf_k": 30}}}}
    objects = chart.render([], old)
    (configmap,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings")
    ]
    assert configmap["data"]["BIGBERTHA_CHAT__RETRIEVAL_MODE"] == "dense"
    for name, value in configmap["data"].items():
        monkeypatch.setenv(name, value)
    with pytest.warns(FutureWarning, match="chat.retrieval_mode"):
        loaded = settings_mod.load().chat.retrieval
    assert (loaded.mode, loaded.rrf_k, loaded.candidates) == ("dense", 30, 10)
    with pytest.raises(ConfigError, match="/settings/chat/retrieval_mode.*one of"):
        chart.render([], {"settings": {"chat": {"retrieval_mode": "sparse"}}})
