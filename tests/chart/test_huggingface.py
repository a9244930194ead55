"""Models from the Hugging Face Hub: prod serves a Llama-2-7b-chat class model pre-fetched into
object storage (its pods have no internet egress); a token Secret, when named, reaches every pod
that loads a model."""

from __future__ import annotations

from typing import Any

from tests.chart.render import ours, pod_specs, render, workflow_containers


def _hf_tokens(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = {}
    containers = [(n, c) for n, spec in pod_specs(ours(docs)) for c in spec["containers"]]
    steps = [(n, t["container"]) for n, t in workflow_containers(docs)]
    for name, container in [*containers, *steps]:
        for env in container.get("env", []):
            if env["name"] == "HF_TOKEN":
                found[name] = env["valueFrom"]["secretKeyRef"]
    return found


def test_prod_serves_llama2_chat_from_object_storage(prod_docs):
    (settings,) = [
        d
        for d in prod_docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "bigbertha-settings"
    ]
    model = "s3://bigbertha-artifacts/models/Llama-2-7b-chat-hf/"
    assert settings["data"]["BIGBERTHA_LLM__MODEL"] == model
    assert settings["data"]["BIGBERTHA_FINETUNE__BASE_MODEL"] == model
    assert _hf_tokens(prod_docs) == {}, "nothing downloads from the Hub in prod"


def test_a_token_secret_reaches_every_model_loader(default_docs):
    assert _hf_tokens(default_docs) == {}
    tokens = _hf_tokens(render({"huggingface": {"existingSecret": "hf"}}))
    assert any("chatbot" in name for name in tokens)
    assert any("finetune" in name for name in tokens)
    assert all(ref == {"name": "hf", "key": "token"} for ref in tokens.values())
