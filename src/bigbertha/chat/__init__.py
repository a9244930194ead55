"""Serving: LLM backends, the per-process model holder with champion hot-swap, the RAG engine,
its JSON API and the Streamlit UI. Imports core, documents, telemetry and models."""
