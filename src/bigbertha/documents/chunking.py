"""Sections into chunks: LlamaIndex's SentenceSplitter counting the embedding model's tokens,
with chunk ids derived from source and content (same object, same chunks, same ids)."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import TYPE_CHECKING, Any

from bigbertha.documents import readers

if TYPE_CHECKING:
    from llama_index.core.schema import TextNode

    from bigbertha.core.settings import Settings

# Metadata that is bookkeeping, not content: never embedded, not shown to the LLM.
_BOOKKEEPING = ["source", "etag", "version_id", "chunk_index"]
_METADATA = [*_BOOKKEEPING, "page", "section", "file_name"]


def chunk_id(source: str, index: int, text: str) -> str:
    """Stable id from source and content: same object, same chunking → same ids."""
    digest = hashlib.sha256(f"{source}\x00{index}\x00{text}".encode())
    return digest.hexdigest()[:32]


class Chunker:
    """LlamaIndex SentenceSplitter counting tokens with the embedding model's own tokenizer."""

    def __init__(self, settings: Settings, tokenizer: Any | None) -> None:
        from llama_index.core.node_parser import SentenceSplitter

        self.splitter = SentenceSplitter(
            chunk_size=settings.ingest.chunk_size,
            chunk_overlap=settings.ingest.chunk_overlap,
            # verbose=False: sections longer than the model's window are what the splitter is
            # for; transformers' "sequence length is longer than..." warning is noise here.
            tokenizer=partial(tokenizer.tokenize, verbose=False) if tokenizer is not None else None,
            include_prev_next_rel=False,  # neighbours' ids would go stale when a source changes
        )

    def chunks(
        self, uri: str, name: str, sections: list[readers.Section], etag: str, version: str | None
    ) -> list[TextNode]:
        from llama_index.core import Document
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

        docs = []
        for number, section in enumerate(sections):
            doc = Document(
                id_=f"{uri}#{number}",  # unique: the splitter maps nodes back to docs by id
                text=section.text,
                metadata={
                    "source": uri,
                    "etag": etag,
                    "version_id": version,
                    "page": section.page,
                    "section": section.section,
                    "file_name": name,
                },
                excluded_embed_metadata_keys=list(_METADATA),
                excluded_llm_metadata_keys=list(_BOOKKEEPING),
            )
            docs.append(doc)
        nodes = self.splitter.get_nodes_from_documents(docs)
        for index, node in enumerate(nodes):
            node.metadata["chunk_index"] = index
            node.id_ = chunk_id(uri, index, node.get_content())
            # The ref doc is the source, so all its chunks are found and deleted together.
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=uri)
        return nodes  # type: ignore[return-value]
