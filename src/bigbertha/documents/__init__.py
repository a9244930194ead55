"""Documents in, chunks out: readers, chunking, embeddings, the Milvus collection, ingestion
and retrieval. Imports only `bigbertha.core`."""
