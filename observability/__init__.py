"""Metrics: per-request records to W&B (offline by default), batched off the request path."""
