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


def pace_streams(window_bytes: int, local_hosts: frozenset[str] | None = None) -> None:
    """Serve's gRPC channels from this process to replicas on this node get an HTTP/2 stream window of
    `window_bytes` (0: gRPC's own, which grows without bound as it probes the link): a replica streaming to us
    then runs at most that far ahead of what we read. A stream's sender blocks when we lag, and what it produced
    meanwhile goes as one item at its next write (deployments/coalescing.py; an answer run's followers get every
    event since their last), so a busy reader gets fewer, fuller items instead of a backlog of one-token items it
    pays for one by one. A reader that keeps up is not slowed (64 streams x 100 items/s through a 1-4 KiB window:
    the same 2.0 s as gRPC's default on loopback).

    Replicas on other nodes keep gRPC's own window: a small one caps a whole connection at about the window per
    round trip (through a 1 ms-RTT link, 64 streams x 200 items/s of 300 B took 4.1 s with 1 KiB instead of 1.0 s).
    `local_hosts`: the addresses that are this node (default: its Ray node IP and loopback).

    Serve builds those channels in `replica_wrapper` with fixed options and no setting for this (ray 2.60), so its
    module's `init_grpc_channel` is wrapped; tests/unit/test_coalescing.py pins that the wrapper is still used."""
    from ray.serve._private.request_router import replica_wrapper

    current = replica_wrapper.init_grpc_channel
    base = getattr(current, "__wrapped__", current)
    if not window_bytes:
        replica_wrapper.init_grpc_channel = base
        return
    if local_hosts is None:
        import ray

        local_hosts = frozenset({ray.util.get_node_ip_address(), "127.0.0.1", "localhost"})

    def init_grpc_channel(address: str, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        if address.rpartition(":")[0].strip("[]") in local_hosts:
            options = [*(options or []), ("grpc.http2.lookahead_bytes", window_bytes), ("grpc.http2.bdp_probe", 0)]
        return base(address, options, *args, **kwargs)

    init_grpc_channel.__wrapped__ = base  # type: ignore[attr-defined]
    replica_wrapper.init_grpc_channel = init_grpc_channel


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


class InProcess:
    """A handle-shaped view of an object in this process (`server.orchestrator_in_ingress`):
    `.method.remote(*args)` calls it directly, so an async generator method is iterated and a coroutine method
    awaited as through a DeploymentHandle, without the transport. `.options(...)` is the same view."""

    def __init__(self, target: Any):
        self._target = target

    def options(self, **_: Any) -> InProcess:
        return self

    def __getattr__(self, name: str) -> _InProcessMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _InProcessMethod(getattr(self._target, name))


@dataclasses.dataclass(frozen=True)
class _InProcessMethod:
    method: Any

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.method(*args, **kwargs)
