"""How our deployments call each other."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle


def configured(handle: DeploymentHandle, grpc: bool) -> DeploymentHandle:
    """The handle with our transport choice (`server.handle_grpc`) made explicit. Left to Serve, it would come
    from the environment of whichever process built the application graph (RAY_SERVE_USE_GRPC_BY_DEFAULT), not
    from our settings."""
    return handle.options(_by_reference=not grpc)
