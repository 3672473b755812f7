"""The ingress's HTTP application, built per replica from the state it serves (vLLM's `build_app` /
`init_app_state` habit): nothing here is a module global that a constructor changes."""

from __future__ import annotations

from fastapi import FastAPI

from deployments import (
    admin_api,
    batch_api,
    chat_api,
    console_api,
    embeddings_api,
    messages_api,
    openai_api,
    rag_api,
    responses_api,
)
from deployments.http_errors import install_error_handlers
from deployments.ingress_state import IngressState
from deployments.middleware import GatewayMiddleware


def build_http_app(state: IngressState, max_body_bytes: int) -> FastAPI:
    """The FastAPI app: the OpenAI surface, files and batches, admin routes, one error model, and the gateway
    middleware (request ids, keys, admin-only routes, body limits) in front of all of them."""
    app = FastAPI(title="llmserve", version="0.1.0", description="OpenAI-compatible LLM serving on Ray Serve.")
    app.state.ingress = state  # what the routes' `Depends(ingress_state)` returns
    install_error_handlers(app)
    app.add_middleware(
        GatewayMiddleware,
        gateway=state.gateway,
        max_body_bytes=max_body_bytes,
        max_file_bytes=state.batch.max_file_bytes,
    )
    app.include_router(chat_api.router)
    app.include_router(openai_api.router)
    app.include_router(embeddings_api.router)
    app.include_router(messages_api.router)
    app.include_router(responses_api.router)
    app.include_router(rag_api.router)
    app.include_router(batch_api.router)  # /v1/files, /v1/batches
    app.include_router(admin_api.router)
    app.include_router(console_api.router)  # /console: pages that sign their callers in themselves
    return app
