"""API keys are only ever kept as SHA-256 hex digests (compared in constant time by the ingress)."""

from __future__ import annotations

import hashlib
import secrets


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "sk-llmserve-") -> str:
    return prefix + secrets.token_urlsafe(32)
