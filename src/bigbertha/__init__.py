"""BigBertha: Kubernetes-native LLMOps (RAG chatbot, telemetry, retraining, ingestion)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bigbertha")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
