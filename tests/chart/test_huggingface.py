"""Gated Hugging Face models: prod names a Llama-2-7b-chat class model and its token Secret."""

from __future__ import annotations

from typing import Any

from tests.chart.render import pod_specs, render, workflow_containers


def _hf_tokens(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = {}
    containers = [(n, c) for n, spec in pod_specs(docs) for c in spec["containers"]]
    steps = [(n, t["container"]) for n, t in workflow_containers(docs)]
    for name, container in [*containers, *steps]:
        for env in container.get("env", []):
            if env["name"] == "HF_TOKEN":
                found[name] = env["valueFrom"]["secretKeyRef"]
    return found


def test_prod_serves_llama2_chat_with_the_token_from_a_secret(prod_docs):
    (settings,) = [
        d
        for d in prod_docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings")
    ]
    assert settings["data"]["BIGBERTHA_LLM__MODEL"] == "meta-llama/Llama-2-7b-chat-hf"
    assert settings["data"]["BIGBERTHA_FINETUNE__BASE_MODEL"] == "meta-llama/Llama-2-7b-chat-hf"
    tokens = _hf_tokens(prod_docs)
    assert any("chatbot" in name for name in tokens)
    assert any("finetune" in name for name in tokens)
    assert all(ref == {"name": "bigbertha-huggingface", "key": "token"} for ref in tokens.values())


def test_no_token_env_without_a_secret(default_docs):
    assert _hf_tokens(default_docs) == {}
    assert _hf_tokens(render({"huggingface": {"existingSecret": "hf"}}))
