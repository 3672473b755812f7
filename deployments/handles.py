"""How our deployments call each other."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from ray.serve import context as serve_context
from ray.serve.handle import DeploymentHandle

T = TypeVar("T")


def configured(handle: DeploymentHandle, grpc: bool) -> DeploymentHandle:
    """The handle with our transport choice (`server.handle_grpc`) made explicit. Left to Serve, it would come
    from the environment of whichever process built the application graph (RAY_SERVE_USE_GRPC_BY_DEFAULT), not
    from our settings."""
    return handle.options(_by_reference=not grpc)


def detached(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `work` as a task that outlives the Serve request which started it.

    Serve cancels the handle calls a request made when that request is cancelled (a client that disconnects
    cancels it), and it finds them through the request context that tasks inherit. Work meant to go on without
    its caller (an answer run, a batch upload's intake) gets a context of its own: same request id for the
    logs, a new internal id, and no cancellation from the parent."""
    parent = serve_context._get_serve_request_context()
    context = contextvars.copy_context()
    context.run(
        serve_context._serve_request_context.set,
        dataclasses.replace(parent, _internal_request_id=uuid.uuid4().hex, cancel_on_parent_request_cancel=False),
    )
    return asyncio.get_running_loop().create_task(work, context=context)
