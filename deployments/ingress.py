"""Ingress deployment: the OpenAI-compatible HTTP surface and the typed Python surface.

It knows HTTP and nothing about models: authenticate, parse, call the orchestrator, turn results into JSON
or SSE. It is the only place that builds HTTP responses. The HTTP app is built per replica, after the
constructor, from the state the constructor made (`__serve_build_asgi_app__`, deployments/http_app.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.errors import NotFound
from core.models import Caller, ChatChunk, ChatRequest, ChatResponse, ConversationMessages
from core.names import ADMIN_TENANT
from core.pricing import self_hosted_price
from core.setting_groups import (
    BatchSettings,
    EngineSettings,
    LimitsSettings,
    MetricsSettings,
    PricingSettings,
    RoutingSettings,
    StateSettings,
)
from deployments.admission import model_capacity
from deployments.answer_stream import answer_events
from deployments.answers import fold
from deployments.direct_ingress import make_ingress_port_rebindable
from deployments.gateway import Gateway
from deployments.handles import InProcess, configured, pace_streams
from deployments.http_app import build_http_app
from deployments.ingress_state import IngressState
from observability import tracing
from rag.embedder import EMBEDDING_MODEL
from state.batches import BatchStore
from state.conversations import ConversationStore
from state.files import FileStore
from state.interactive_load import InteractiveLoad
from state.journal import Journal
from state.rag_grants import SharedGrants
from state.redis_client import async_redis
from state.response_cache import ResponseCache
from state.responses import ResponseStore


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """`master_key_hash`: the SHA-256 of the master key (never the key); `served_models`: the model names
    clients may ask for; `ingress_replicas`: how many share the model's capacity."""

    def __init__(
        self,
        orchestrator: DeploymentHandle,
        retriever: DeploymentHandle,
        batch_worker: DeploymentHandle | None = None,
        *,
        master_key_hash: str,
        limits: LimitsSettings,
        state: StateSettings,
        engines: list[EngineSettings],
        pricing: PricingSettings,
        routing: RoutingSettings,
        batch: BatchSettings,
        served_models: list[str],
        ingress_replicas: int = 1,
        grpc: bool = True,
        metrics: MetricsSettings | None = None,
        stream_window_bytes: int = 0,
        orchestrator_here: dict | None = None,
    ):
        """`stream_window_bytes`: how far the orchestrator's answer streams may run ahead of this replica
        (server.stream_window_bytes, deployments/handles.py `pace_streams`). `orchestrator_here`: the
        Orchestrator's arguments, to answer in this process (server.orchestrator_in_ingress) instead of through
        `orchestrator`, which then serves batch work only."""
        if not master_key_hash:
            raise ValueError("a master key is required: set LLMSERVE_MASTER_KEY (or master_key_sha256)")
        make_ingress_port_rebindable()  # before Serve starts this replica's HTTP server
        if grpc:
            pace_streams(stream_window_bytes)
        tracing.setup_tracing("ingress", metrics.otlp_endpoint if metrics else None)
        client = async_redis(state.redis_url)
        engine = engines[0]
        # Each self-hosted deployment's capacity, shared by its LoRA adapters' names.
        deployments = {alias: e.model_name for e in engines for alias in e.adapters()}
        gateway = Gateway(
            client,
            master_key_hash=master_key_hash,
            redis_prefix=state.redis_prefix,
            limits=limits,
            price=self_hosted_price(pricing),
            capacity=model_capacity(limits, engine, ingress_replicas),
            capacities={e.model_name: model_capacity(limits, e, ingress_replicas) for e in engines},
            deployments=deployments,
        )
        self._max_body_bytes = limits.max_body_bytes
        answering = configured(orchestrator, grpc)
        if orchestrator_here is not None:
            from deployments.orchestrator import Orchestrator

            answering = InProcess(Orchestrator.func_or_class(**orchestrator_here))
        self._state = IngressState(
            gateway=gateway,
            orchestrator=answering,
            retriever=configured(retriever, grpc),
            batch_worker=configured(batch_worker, grpc) if batch_worker is not None else None,
            redis=client,
            redis_prefix=state.redis_prefix,
            conversations=ConversationStore(
                client,
                state.redis_prefix,
                state.conversation_ttl_s,
                state.conversation_max_messages,
                state.conversation_max_bytes,
            ),
            files=FileStore(client, state.redis_prefix),
            batches=BatchStore(client, state.redis_prefix),
            grants=SharedGrants(client, state.redis_prefix),
            journal=Journal(client, state.redis_prefix, state.journal_ttl_s),
            responses=ResponseStore(client, state.redis_prefix, state.journal_ttl_s),
            batch=batch,
            routing=routing,
            pricing=pricing,
            gpus_per_replica=engine.tensor_parallel_size,
            accelerator=engine.accelerator,
            served_models=served_models,
            model_parents=deployments,
            self_hosted_models=[e.model_name for e in engines],
            write_timeout_s=limits.write_timeout_s,
            response_cache=ResponseCache(client, state.redis_prefix, state.response_cache_ttl_s),
            cache_by_default=state.response_cache,
        )
        # Batch workers yield to interactive traffic: publish how much of it this replica has in flight.
        load = InteractiveLoad(client, state.redis_prefix)
        loop = asyncio.get_event_loop()
        self._publisher = loop.create_task(load.run_publisher(gateway.admission.total, 0.1))
        self._gauges = loop.create_task(gateway.admission.report_every([*served_models, EMBEDDING_MODEL]))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._state, self._max_body_bytes)

    # --- typed Python surface (serve.get_app_handle(app_name).chat.remote(...)) ----------------------
    # Trusted in-cluster callers: no API key; they act for the tenant they name (the admin tenant by default).
    async def _caller(self, tenant: str) -> Caller:
        """The named tenant must exist, as for an admin key's X-LLMServe-Tenant: what is stored for it stays
        findable by `tenants delete`, and metrics are labelled only with tenants an admin made."""
        if tenant != ADMIN_TENANT and await self._state.gateway.tenants.get(tenant) is None:
            raise NotFound(f"no tenant {tenant!r}", param="tenant")
        return Caller(tenant=tenant)

    async def chat(self, request: ChatRequest, tenant: str = ADMIN_TENANT) -> ChatResponse:
        """Whole answer."""
        request = request.model_copy(update={"stream": False})
        chunks = [
            f.chunk async for batch in answer_events(self._state, request, await self._caller(tenant)) for _, f in batch
        ]
        return fold(chunks, request.conversation_id)

    async def chat_stream(self, request: ChatRequest, tenant: str = ADMIN_TENANT) -> AsyncIterator[ChatChunk]:
        """Streamed answer, chunk by chunk: `handle.options(stream=True).chat_stream.remote(request)`."""
        request = request.model_copy(update={"stream": True})
        async for batch in answer_events(self._state, request, await self._caller(tenant)):
            for _, frame in batch:
                yield frame.chunk

    async def get_conversation(self, conversation_id: str, tenant: str = ADMIN_TENANT) -> ConversationMessages:
        return await self._state.orchestrator.conversation.remote(conversation_id, await self._caller(tenant))
