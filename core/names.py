"""The names users choose for what they own, and the one check of each: tenant ids, conversation ids and RAG
collection names. A name that passes can never address anything but the object it names (no separators of
our key layouts in it), and a tenant's names are its own: two tenants may both have a "default" collection or
a conversation "ada-1" and get two objects.
"""

from __future__ import annotations

import re

from core.errors import InvalidRequest

# The embedding model's name in /v1/models and /v1/embeddings (rag/embedder.py serves it): no chat model may
# take it.
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# The master key's tenant. No key can be created into it, so nothing a user names collides with it.
ADMIN_TENANT = "admin"
TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# No ':' (the separator of our Redis keys): an id like "x:commits" cannot reach another key.
CONVERSATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONVERSATION_ID_RULE = "1-128 characters of [A-Za-z0-9._-], starting alphanumeric"
# File and batch ids (ours: "file-<hex>", "batch_<hex>", "file-batch_<hex>-output"): no ':' either, so an id
# like "file-x:content" names no object, not another key.
OBJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
# A collection shared by the admins with chosen tenants is named "shared.<name>"; a tenant's own collections
# cannot take that prefix.
SHARED_PREFIX = "shared."
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){1,126}[A-Za-z0-9]$")


def validate_tenant_id(tenant: str, param: str = "tenant") -> str:
    if not TENANT_ID_RE.match(tenant) or tenant == ADMIN_TENANT:
        raise InvalidRequest(
            f"invalid tenant {tenant!r}: 1-63 characters of [a-z0-9_-], starting with a letter or digit "
            f"({ADMIN_TENANT!r} is reserved)",
            param=param,
        )
    return tenant


def validate_collection_name(name: str, param: str = "rag.collection") -> str:
    """A collection name as a request gives it: the tenant's own (3-128 characters of [A-Za-z0-9._-],
    alphanumeric at both ends, no '..'), or `shared.<name>` for a shared one."""
    bare = name[len(SHARED_PREFIX) :] if name.startswith(SHARED_PREFIX) else name
    if not _COLLECTION_RE.match(bare):
        raise InvalidRequest(
            f"invalid collection name {name!r}: 3-128 characters of [A-Za-z0-9._-], alphanumeric at both ends "
            f"(a shared collection: '{SHARED_PREFIX}<name>')",
            param=param,
        )
    return name


def is_shared(collection: str) -> bool:
    return collection.startswith(SHARED_PREFIX)
