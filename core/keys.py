"""API key material: how a key is made and the one hash under which it is stored and compared."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-llmserve-"


def key_hash(key: str) -> str:
    """SHA-256 hex of a key: the only form of a key that Redis and the deployments ever hold."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = KEY_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)
