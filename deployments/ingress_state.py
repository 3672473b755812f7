"""What the ingress's HTTP routes work with, built once per replica by `Ingress.__init__` and handed to
`build_http_app` (deployments/http_app.py), which puts it on `app.state.ingress`: the routes take it with
`Depends(ingress_state)`, never from a module global."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fastapi import Request
from ray.serve.handle import DeploymentHandle

from core.setting_groups import BatchSettings, PricingSettings, RoutingSettings
from deployments.gateway import Gateway, Principal
from deployments.handles import InProcess, detached
from state.batches import BatchStore
from state.conversations import ConversationStore
from state.files import FileStore
from state.journal import Journal
from state.rag_grants import SharedGrants
from state.response_cache import ResponseCache
from state.responses import ResponseStore

logger = logging.getLogger("llmserve.ingress")


@dataclass
class IngressState:
    gateway: Gateway
    orchestrator: DeploymentHandle | InProcess  # in this process: server.orchestrator_in_ingress
    retriever: DeploymentHandle
    batch_worker: DeploymentHandle | None
    redis: aioredis.Redis
    redis_prefix: str
    conversations: ConversationStore
    files: FileStore
    batches: BatchStore
    grants: SharedGrants
    journal: Journal
    responses: ResponseStore
    batch: BatchSettings
    routing: RoutingSettings
    pricing: PricingSettings
    gpus_per_replica: int
    accelerator: str  # what a self-hosted replica runs on: cpu | gpu
    served_models: list[str]
    model_parents: dict[str, str] = field(default_factory=dict)  # a LoRA adapter's names -> its base model
    self_hosted_models: list[str] = field(default_factory=list)  # one self-hosted provider each (the first's name
    # is the configured one, the others' '<name>/<model>')
    write_timeout_s: float = 30.0
    response_cache: ResponseCache | None = None  # answers of deterministic requests (invalidated on ingest)
    cache_by_default: bool = True  # for keys that do not say (state.response_cache)
    created: int = field(default_factory=lambda: int(time.time()))
    orchestrator_stream: DeploymentHandle | InProcess = field(init=False)

    carrying_on: set[str] = field(default_factory=set, init=False)  # orphaned background answers followed here
    _background: set[asyncio.Task] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.orchestrator_stream = self.orchestrator.options(stream=True)

    def background(self, work: Coroutine) -> None:
        """Run `work` after the response (kept referenced until it ends; its failure is logged)."""
        task = detached(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work failed: %r", task.exception(), exc_info=task.exception())


async def ingress_state(request: Request) -> IngressState:
    """FastAPI dependency: the replica's IngressState. (async: FastAPI runs a plain `def` dependency in its thread
    pool, a thread hop per request for an attribute read.)"""
    return request.app.state.ingress


async def principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (set by the gateway middleware), acting for its tenant."""
    return request.state.principal
