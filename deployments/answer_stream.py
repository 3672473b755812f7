"""How the ingress follows an answer: from the orchestrator, and when the orchestrator replica serving it dies
or becomes unreachable, from another one (or the restarted one), which takes the answer over from its journal
and continues it. The client sees one stream: events arrive once each, in order, by sequence number."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError

from core.errors import LLMServeError, ServiceUnavailable, unwrap
from core.models import Caller, ChatRequest
from deployments.frames import Batch, from_wire
from deployments.ingress_state import IngressState

logger = logging.getLogger("llmserve.ingress")
_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


def replica_gone(exc: BaseException) -> bool:
    """The call failed because the replica serving it died or cannot be reached (not because of the request)."""
    exc = unwrap(exc)
    if isinstance(exc, LLMServeError):
        return exc.code == "replica_stopping"  # its run was cut off by the replica stopping
    if isinstance(exc, _GONE):
        return True
    # Over Serve's gRPC transport a dead replica is a gRPC status (UNAVAILABLE, or a cancelled call).
    code = getattr(exc, "code", None)
    name = getattr(code() if callable(code) else code, "name", "")
    return name in ("UNAVAILABLE", "CANCELLED")


async def answer_events(
    ingress: IngressState, request: ChatRequest, caller: Caller, after_seq: int = 0, deadline_s: float = 120.0
) -> AsyncIterator[Batch]:
    """The answer's events after `after_seq`, surviving orchestrator replicas that die on the way; an empty batch
    says a new answer has begun (before its first chunk). Gives up when no replica carried it on for
    `deadline_s` since its last event."""
    deadline = time.monotonic() + deadline_s
    take_over, wait_s = False, 0.1
    while True:
        stream = ingress.orchestrator_stream.chat_stream.remote(request, caller, after_seq, take_over)
        try:
            async for items in stream:
                if not items:  # the answer has begun
                    yield []
                    continue
                fresh = from_wire(items, after_seq)
                if fresh:
                    after_seq = fresh[-1][0]
                    deadline = time.monotonic() + deadline_s  # an answer that moves on is not stuck
                    yield fresh
            return
        except Exception as exc:
            if not replica_gone(exc):
                raise
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    "no orchestrator replica could carry on this answer; retry", retry_after_s=1
                ) from exc
            logger.warning(
                "answer %s: orchestrator replica gone after event %d (%s); continuing it on another",
                caller.response_id,
                after_seq,
                type(exc).__name__,
            )
            take_over = True
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, 2.0)
        finally:
            if inspect.isasyncgen(stream):  # answered in this process (server.orchestrator_in_ingress): a reader
                await stream.aclose()  # that stops early closes it now, not whenever it is collected
