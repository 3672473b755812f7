"""What the ingress's HTTP routes work with, built once per replica by `Ingress.__init__` and handed to
`build_http_app` (deployments/http_app.py), which puts it on `app.state.ingress`: the routes take it with
`Depends(ingress_state)`, never from a module global."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fastapi import Request
from ray.serve.handle import DeploymentHandle

from core.setting_groups import BatchSettings, PricingSettings, RoutingSettings
from deployments.gateway import Gateway, Principal
from state.batches import BatchStore
from state.conversations import ConversationStore
from state.files import FileStore
from state.rag_grants import SharedGrants


@dataclass
class IngressState:
    gateway: Gateway
    orchestrator: DeploymentHandle
    retriever: DeploymentHandle
    batch_worker: DeploymentHandle | None
    redis: aioredis.Redis
    redis_prefix: str
    conversations: ConversationStore
    files: FileStore
    batches: BatchStore
    grants: SharedGrants
    batch: BatchSettings
    routing: RoutingSettings
    pricing: PricingSettings
    gpus_per_replica: int
    served_models: list[str]
    created: int = field(default_factory=lambda: int(time.time()))
    orchestrator_stream: DeploymentHandle = field(init=False)

    def __post_init__(self) -> None:
        self.orchestrator_stream = self.orchestrator.options(stream=True)


def ingress_state(request: Request) -> IngressState:
    """FastAPI dependency: the replica's IngressState."""
    return request.app.state.ingress


def principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (set by the gateway middleware), acting for its tenant."""
    return request.state.principal
