"""OpenAI `/v1/embeddings`, served by the Retriever's embedding model (the one RAG uses, listed in /v1/models).

A request is let in like a chat request (the model's capacity, the key's model list, its limits and budget,
reserved from an estimate) and settled with the exact token count the model was fed. A request's inputs are
embedded in one forward pass (in batches of `rag.batch_size`). An input longer than the model reads is a 400 naming
it, never cut short in silence.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from core.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, encode_vector
from core.errors import InvalidRequest, NotFound
from core.pricing import Price
from core.tokens import estimate_tokens
from deployments.gateway import Principal
from deployments.ingress_state import IngressState, ingress_state, principal
from rag.embedder import EMBEDDING_DIM, EMBEDDING_MODEL

router = APIRouter()
State = Annotated[IngressState, Depends(ingress_state)]
Who = Annotated[Principal, Depends(principal)]


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def embeddings(body: EmbeddingRequest, ingress: State, who: Who) -> EmbeddingResponse:
    if body.model != EMBEDDING_MODEL:
        raise NotFound(f"model {body.model!r} does not make embeddings; try {EMBEDDING_MODEL!r}", param="model")
    if body.dimensions not in (None, EMBEDDING_DIM):
        raise InvalidRequest(
            f"{EMBEDDING_MODEL} makes {EMBEDDING_DIM}-dimensional embeddings; dimensions cannot change that",
            param="dimensions",
            code="unsupported_parameter",
        )
    inputs = body.inputs()
    price = Price(ingress.pricing.embedding_per_mtok, 0.0)
    estimate = sum(estimate_tokens(len(i)) if isinstance(i, str) else len(i) for i in inputs)
    ticket = await ingress.gateway.open_for(who, EMBEDDING_MODEL, estimate, 0, price)
    try:
        vectors, tokens = await ingress.retriever.embed.remote(inputs)
        ticket.begun()  # settled here, with the exact count
        ingress.gateway.settle_later(who, ticket.reservation_id, tokens, 0, price.cost(tokens, 0))
    finally:
        ticket.finish()
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=encode_vector(v, body.encoding_format)) for i, v in enumerate(vectors)],
        model=EMBEDDING_MODEL,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
