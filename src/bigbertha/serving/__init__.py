"""The inference tier's own processes, beside the pinned vLLM server in its pod: the init step
that puts the base model on disk (`basemodel`), the sidecar that keeps vLLM's LoRA adapters in
step with the registry's aliases (`adapters`, `sidecar`), its client for vLLM's runtime-LoRA API
(`vllm`) and the Deployment roll a merged champion needs (`rollout`). Imports core and models;
the chatbot reaches the tier through its OpenAI-compatible backend, never through this package.
"""
