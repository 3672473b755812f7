"""How our deployments call each other."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from serve_app.settings import Settings


def configured(handle: DeploymentHandle, settings: Settings) -> DeploymentHandle:
    """The handle with our transport choice made explicit. Left to Serve, it would come from the environment
    of whichever process built the application graph (RAY_SERVE_USE_GRPC_BY_DEFAULT), not from our settings."""
    return handle.options(_by_reference=not settings.handle_grpc)
