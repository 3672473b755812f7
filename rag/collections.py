"""RAG collections per tenant: what a request calls a collection, and the Chroma collection that holds it.

A tenant's own collection `docs` is `t.<tenant>.docs` in Chroma; a shared one, `shared.handbook` in requests, is
`s.handbook`. Tenant ids hold no '.', so the mapping is one-to-one, and no name a tenant can give reaches
another tenant's collection. Who may read a shared collection is decided before (state/rag_grants.py).
"""

from __future__ import annotations

from core.names import SHARED_PREFIX, is_shared, validate_collection_name

_OWN, _SHARED = "t.", "s."


def physical_name(tenant: str, collection: str) -> str:
    """Chroma's name for `collection` as `tenant` names it (checked)."""
    validate_collection_name(collection)
    if is_shared(collection):
        return _SHARED + collection[len(SHARED_PREFIX) :]
    return f"{_OWN}{tenant}.{collection}"


def tenant_prefix(tenant: str) -> str:
    """Every Chroma collection of `tenant` starts with this."""
    return f"{_OWN}{tenant}."


def public_name(physical: str) -> str:
    """The name requests use for a Chroma collection of ours."""
    if physical.startswith(_SHARED):
        return SHARED_PREFIX + physical[len(_SHARED) :]
    return physical[len(_OWN) :].split(".", 1)[1]
