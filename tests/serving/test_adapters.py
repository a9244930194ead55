"""The adapter hand-off from the registry to the inference tier, on real services.

MLflow (a real server, artifacts proxied to S3 as the chart runs it) holds the registered
versions; S3 (moto) holds the base model and, behind MLflow, the adapters; the sidecar's
`AdapterSync` stages and loads them; the chatbot's `ModelServer` on the OpenAI backend follows
the champion. vLLM itself cannot run on these machines (no GPU, and its wheel pins another torch),
so the tier is tests/serving/fake_vllm.py, which implements the vLLM 0.33.0 routes used here
exactly as that release's source defines them (its docstring cites the files and functions).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bigbertha.chat.llm import ModelLoadError
from bigbertha.chat.model_server import ModelServer
from bigbertha.cli import app
from bigbertha.core import storage
from bigbertha.core.settings import Settings
from bigbertha.local.tiny_llama import tiny_llama
from bigbertha.models import loading, registry
from bigbertha.serving import basemodel, sidecar
from bigbertha.serving.adapters import AdapterSync
from bigbertha.serving.vllm import VllmClient
from tests.models.helpers import make_adapter, tiny_corpus
from tests.services import Service, ServiceManager
from tests.serving.fake_vllm import FakeVllm

pytestmark = pytest.mark.slow
BASE_REF = "s3://models/tiny-llama/"
SERVED = "tiny-base"
QUESTION = [{"role": "user", "content": "what color is the sky ?"}]


@dataclass
class Registry:
    """Real S3 and MLflow, a base model in S3 and adapters trained on it (registered per test)."""

    s3: Service
    mlflow: Service
    adapters: list[Path]
    merged: Path
    other_base_adapter: Path


@pytest.fixture(scope="module")
def backing(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    s3 = services.s3()
    env = {
        "MLFLOW_S3_ENDPOINT_URL": f"http://{s3.extra['endpoint']}",
        "AWS_ACCESS_KEY_ID": str(s3.extra["access_key"]),
        "AWS_SECRET_ACCESS_KEY": str(s3.extra["secret_key"]),
    }
    settings = Settings(s3=_s3(s3))
    storage.open_client(settings).ensure_bucket("mlflow")
    mlflow = services.mlflow(artifacts_destination="s3://mlflow/artifacts", env=env)
    root = tmp_path_factory.mktemp("tier")
    corpus = tiny_corpus()
    base = tiny_llama(root / "tiny-llama", corpus)
    storage.upload_path(settings, base, BASE_REF)
    adapters = []
    for seed in (1, 2, 3):
        adapters.append(root / f"v{seed}" / "adapter")
        make_adapter(base, adapters[-1], seed=seed)
    other = root / "other" / "adapter"
    make_adapter(tiny_llama(root / "other-base", corpus, seed=7), other, seed=4)
    merged = tiny_llama(root / "merged", corpus, seed=5)  # a full model: what --merge uploads
    return Registry(s3, mlflow, adapters, merged, other)


def _s3(s3: Service) -> dict[str, Any]:
    return {
        "endpoint": s3.extra["endpoint"],
        "access_key": s3.extra["access_key"],
        "secret_key": s3.extra["secret_key"],
    }


@dataclass
class Tier:
    """One vLLM pod (fake server, its disk) and a chatbot, for a registered model of its own."""

    settings: Settings
    vllm: FakeVllm
    rolls: list[str] = field(default_factory=list)

    def register(self, directory: Path, base: str = BASE_REF) -> str:
        tags = {"base_model": base} if base else {}
        return registry.register_challenger(self.settings, directory, tags, loading.pyfunc_model())

    def sync(self) -> Any:
        client = VllmClient(self.vllm.url, timeout=30)
        try:
            return AdapterSync(self.settings, client, roll=self._roll).sync_once()
        finally:
            client.close()

    def _roll(self, ref: str) -> bool:
        self.rolls.append(ref)
        return True

    def chatbot(self) -> ModelServer:
        return ModelServer.from_settings(self.settings).start(watch=False)


def _settings(backing: Registry, disk: Path, **serving: Any) -> Settings:
    return Settings(
        s3=_s3(backing.s3),
        mlflow={"tracking_uri": backing.mlflow.url, "model_name": f"m-{uuid.uuid4().hex[:8]}"},
        serving={
            "base_model": BASE_REF,
            "served_name": SERVED,
            "model_dir": str(disk / "models" / "base"),
            "adapters_dir": str(disk / "adapters"),
            **serving,
        },
        chat={"champion_alias": "champion", "champion_poll_seconds": 0.2},
    )


def _start_pod(settings: Settings) -> FakeVllm:
    """The pod's init step, then vLLM on what it wrote (the args file's served names)."""
    model_dir = basemodel.fetch(settings)
    args = yaml.safe_load((model_dir.parent / basemodel.VLLM_ARGS).read_text())
    return FakeVllm(
        model=str(model_dir),
        served_names=args["served-model-name"],
        resolver_cache_dir=settings.serving.adapters_dir,
    ).start()


@pytest.fixture
def tier(backing: Registry, tmp_path: Path, clean_env: Path) -> Iterator[Tier]:
    settings = _settings(backing, tmp_path)
    Path(settings.serving.adapters_dir).mkdir(parents=True)
    vllm = _start_pod(settings)
    settings = settings.model_copy(
        update={
            "llm": settings.llm.model_copy(
                update={"backend": "openai", "model": SERVED, "api_base": f"{vllm.url}/v1"}
            )
        }
    )
    yield Tier(settings, vllm)
    vllm.stop()


def _answer(server: ModelServer) -> str:
    return "".join(server.current().stream(QUESTION, max_new_tokens=32, temperature=0))


def test_the_init_step_serves_the_base_from_object_storage(tier: Tier) -> None:
    model_dir = Path(tier.settings.serving.model_dir)
    assert (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))
    assert basemodel.served_base(tier.settings) == BASE_REF
    assert tier.vllm.served_names == [SERVED]
    # A restarted init container keeps the complete download (14 GB in production).
    stamp = (model_dir / "config.json").stat().st_mtime_ns
    basemodel.fetch(tier.settings)
    assert (model_dir / "config.json").stat().st_mtime_ns == stamp


def test_champion_challenger_and_previous_are_loaded_by_their_served_names(
    tier: Tier, backing: Registry
) -> None:
    name = tier.settings.mlflow.model_name
    v1, v2, v3 = (tier.register(a) for a in backing.adapters)
    report = tier.sync()
    assert report.aliases == {"champion": None, "challenger": None, "previous": None}
    assert report.loaded == [] and tier.vllm.loras == {}

    registry.promote(tier.settings, v1)
    registry.promote(tier.settings, v2)  # v1 becomes previous
    client = registry.client(tier.settings)
    client.set_registered_model_alias(name, registry.CHALLENGER, v3)
    report = tier.sync()
    served = {v: registry.served_name(name, v) for v in (v1, v2, v3)}
    assert report.loaded[0] == served[v2], "the champion loads first"
    assert set(tier.vllm.loras) == set(served.values())
    assert report.serving == {
        "champion": served[v2],
        "challenger": served[v3],
        "previous": served[v1],
    }
    # Staged once per version, with the base rewritten to vLLM's --model (the resolver's rule).
    staged = Path(tier.settings.serving.adapters_dir) / served[v2]
    config = json.loads((staged / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tier.vllm.model
    assert tier.vllm.loras[served[v2]].path == str(staged)
    # A second pass with nothing changed calls nothing but the listing.
    calls = len(tier.vllm.calls)
    assert tier.sync().loaded == []
    assert [c for c in tier.vllm.calls[calls:] if c[0] == "POST"] == []


def test_promotion_and_rollback_reach_the_chatbot_without_a_restart(
    tier: Tier, backing: Registry
) -> None:
    name = tier.settings.mlflow.model_name
    chatbot = tier.chatbot()
    # No champion: the chatbot asks the tier for its base model.
    assert chatbot.current().ref == SERVED and chatbot.current().version == SERVED
    assert _answer(chatbot).startswith(f"Answered by {SERVED} ")

    v1 = tier.register(backing.adapters[0])
    registry.promote(tier.settings, v1)
    # Before the sidecar loaded it, the tier does not list it: the chatbot keeps the base.
    assert chatbot.check_now() is False
    assert "does not serve" in (chatbot.status().last_error or "")
    tier.sync()
    assert chatbot.check_now() is True
    assert chatbot.current().version == v1  # labelled like the in-process backend labels it
    assert _answer(chatbot).startswith(f"Answered by {registry.served_name(name, v1)} ")

    v2 = tier.register(backing.adapters[1])
    registry.promote(tier.settings, v2)
    tier.sync()
    assert chatbot.check_now() is True and chatbot.current().version == v2

    result = CliRunner().invoke(app, ["promote", "--rollback"], env=_env(tier.settings))
    assert result.exit_code == 0, result.output
    report = tier.sync()
    # v2 lost every alias (rollback removes `previous` when v1 has no predecessor): unloaded.
    assert report.unloaded == [registry.served_name(name, v2)]
    assert not (Path(tier.settings.serving.adapters_dir) / registry.served_name(name, v2)).exists()
    assert chatbot.check_now() is True and chatbot.current().version == v1
    assert _answer(chatbot).startswith(f"Answered by {registry.served_name(name, v1)} ")

    # The champion alias removed altogether: back to the base model, not a dangling adapter.
    registry.client(tier.settings).delete_registered_model_alias(name, registry.CHAMPION)
    tier.sync()
    assert chatbot.check_now() is True and chatbot.current().ref == SERVED
    assert tier.vllm.loras == {}


def test_the_running_sidecar_and_chatbot_follow_a_promotion_within_a_poll(
    tier: Tier, backing: Registry
) -> None:
    """The real loops, polling every 0.2 s: `promote` moves the alias, nothing restarts."""
    settings = tier.settings.model_copy(
        update={
            "serving": tier.settings.serving.model_copy(
                update={"url": tier.vllm.url, "poll_seconds": 0.2, "status_port": _port()}
            )
        }
    )
    v1 = tier.register(backing.adapters[0])
    car = sidecar.build(settings)
    loop = threading.Thread(target=car.loop, daemon=True)
    loop.start()
    chatbot = ModelServer.from_settings(settings).start(watch=True)
    try:
        registry.promote(settings, v1)
        moved = time.monotonic()
        deadline = moved + 60
        while chatbot.current().version != v1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chatbot.current().version == v1, chatbot.status()
        assert car.ready.is_set() and car.last is not None
        assert car.last.serving["champion"] == registry.served_name(settings.mlflow.model_name, v1)
    finally:
        chatbot.stop()
        car.stop.set()
        loop.join(10)


def test_a_staged_adapter_serves_even_before_its_load_call(tier: Tier, backing: Registry) -> None:
    """vLLM's filesystem resolver accepts the staged copy because staging rewrote its base."""
    import openai

    v1 = tier.register(backing.adapters[0])
    served = registry.served_name(tier.settings.mlflow.model_name, v1)
    staged = AdapterSync(tier.settings, VllmClient(tier.vllm.url)).stage(served, v1)
    assert tier.vllm.loras == {}
    client = openai.OpenAI(base_url=f"{tier.vllm.url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=served, messages=QUESTION)  # type: ignore[arg-type]
    assert reply.model == served
    assert tier.vllm.loras[served].path == str(staged)
    # Without the rewrite (PEFT records the training-time base), the resolver refuses it.
    config = json.loads((staged / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-2-7b-chat-hf"
    other = staged.parent / "bigbertha-unrewritten-v1"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model=other.name, messages=QUESTION)  # type: ignore[arg-type]


def test_an_adapter_trained_on_another_base_is_not_loaded(tier: Tier, backing: Registry) -> None:
    name = tier.settings.mlflow.model_name
    foreign = tier.register(backing.other_base_adapter, base="meta-llama/Llama-2-7b-chat-hf")
    registry.promote(tier.settings, foreign)
    report = tier.sync()
    served = registry.served_name(name, foreign)
    assert report.skipped[served].startswith("trained on meta-llama/Llama-2-7b-chat-hf")
    assert tier.vllm.loras == {} and "champion" not in report.serving
    with pytest.raises(ModelLoadError, match="does not serve"):
        ModelServer.from_settings(tier.settings)._load(f"models:/{name}/{foreign}")


def test_a_rejected_adapter_is_reported_and_the_others_still_load(
    tier: Tier, backing: Registry
) -> None:
    name = tier.settings.mlflow.model_name
    v1, v2 = (tier.register(a) for a in backing.adapters[:2])
    registry.promote(tier.settings, v1)
    registry.client(tier.settings).set_registered_model_alias(name, registry.CHALLENGER, v2)
    tier.vllm.max_lora_rank = 2  # the adapters have rank 4: vLLM's 500 for both
    report = tier.sync()
    assert set(report.errors) == {registry.served_name(name, v) for v in (v1, v2)}
    assert "greater than max_lora_rank 2" in report.errors[registry.served_name(name, v1)]
    tier.vllm.max_lora_rank = 16  # e.g. the chart's serving.lora.maxRank raised
    assert set(tier.sync().loaded) == set(report.errors)


def test_registry_down_changes_nothing(tier: Tier, backing: Registry) -> None:
    v1 = tier.register(backing.adapters[0])
    registry.promote(tier.settings, v1)
    tier.sync()
    down = tier.settings.model_copy(
        update={
            "mlflow": tier.settings.mlflow.model_copy(update={"tracking_uri": "http://127.0.0.1:9"})
        }
    )
    from bigbertha.chat.rag import limit_registry_retries
    from bigbertha.core.errors import ServiceUnavailable

    limit_registry_retries()
    with pytest.raises(ServiceUnavailable):
        AdapterSync(down, VllmClient(tier.vllm.url)).sync_once()
    assert list(tier.vllm.loras) == [registry.served_name(tier.settings.mlflow.model_name, v1)]


def test_a_merged_champion_rolls_the_tier_onto_it_and_back(
    tier: Tier, backing: Registry, tmp_path: Path
) -> None:
    name = tier.settings.mlflow.model_name
    v1 = tier.register(backing.adapters[0])
    merged = tier.register(backing.merged, base="")
    assert registry.version_kind(tier.settings, merged) == "model"
    assert registry.version_kind(tier.settings, v1) == "adapter"
    registry.promote(tier.settings, v1)
    tier.sync()
    registry.promote(tier.settings, merged)
    report = tier.sync()
    assert tier.rolls == [f"models:/{name}/{merged}"] and report.roll == tier.rolls[0]
    assert "merged model" in report.skipped[registry.served_name(name, merged)]

    # The rolled pod: the init step reads the annotation (downward API) and serves that version
    # under its served name too, so the chatbot finds the champion as it finds an adapter.
    pod = tier.settings.model_copy(
        update={
            "serving": tier.settings.serving.model_copy(
                update={
                    "base_override": tier.rolls[0],
                    "model_dir": str(tmp_path / "rolled" / "models" / "base"),
                    "adapters_dir": str(tmp_path / "rolled" / "adapters"),
                }
            )
        }
    )
    vllm = _start_pod(pod)
    try:
        assert vllm.served_names == [SERVED, registry.served_name(name, merged)]
        pod = pod.model_copy(
            update={"llm": pod.llm.model_copy(update={"api_base": f"{vllm.url}/v1"})}
        )
        rolled = Tier(pod, vllm)
        report = rolled.sync()
        assert rolled.rolls == [] and report.serving["champion"] == registry.served_name(
            name, merged
        )
        # The previous champion was trained on the original base: not applied to the merged one.
        assert report.skipped[registry.served_name(name, v1)].startswith(f"trained on {BASE_REF}")
        chatbot = rolled.chatbot()
        assert chatbot.current().version == merged
        assert _answer(chatbot).startswith(f"Answered by {SERVED} ")  # vLLM names its first name

        # Rolled back: the champion is an adapter again, so the pod asks to roll back onto the base.
        result = CliRunner().invoke(app, ["promote", "--rollback"], env=_env(pod))
        assert result.exit_code == 0, result.output
        assert rolled.sync().roll == BASE_REF and rolled.rolls == [BASE_REF]
    finally:
        vllm.stop()


def _env(settings: Settings) -> dict[str, str]:
    """The BIGBERTHA_* variables a pod would get for these settings."""
    return {
        "BIGBERTHA_MLFLOW__TRACKING_URI": settings.mlflow.tracking_uri,
        "BIGBERTHA_MLFLOW__MODEL_NAME": settings.mlflow.model_name,
    }


def _port() -> int:
    from tests.services import free_port

    return free_port()
