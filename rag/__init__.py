"""Retrieval: chunking, embedding (all-MiniLM-L6-v2, offline), Chroma storage and idempotent ingestion."""
