"""The environment `llmserve up` gives Serve before Ray starts (serve_app/runtime.py): the direct-ingress port
range it reserves, which decides which ingress replicas (ours and other apps') can serve HTTP at all."""

import os

import pytest

from core.settings import Settings
from serve_app.runtime import serve_environment

KEYS = (
    "RAY_ADDRESS",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
)


@pytest.fixture
def clean_env():
    """None of KEYS set; afterwards the environment as it was (serve_environment sets more than KEYS)."""
    saved = dict(os.environ)
    for key in KEYS:
        os.environ.pop(key, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def settings(ingress: int, direct: bool = True) -> Settings:
    return Settings(server={"port": 9100, "direct_ingress": direct}, replicas={"ingress": ingress})


def test_one_port_per_ingress_replica_and_no_more(clean_env):
    serve_environment(settings(ingress=2))
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    # Serve's range excludes its end: ports 9100 and 9101, so a third ingress replica would find none
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "9100"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "9102"


def test_spare_ports_follow_ours_for_other_apps_ingress_replicas(clean_env):
    serve_environment(settings(ingress=1), spare_ingress_ports=2)
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "9103"


def test_a_joined_cluster_keeps_its_own_environment(clean_env):
    os.environ["RAY_ADDRESS"] = "ray://10.0.0.1:10001"
    serve_environment(settings(ingress=1), spare_ingress_ports=2)
    assert "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT" not in os.environ


def test_without_direct_ingress_no_port_range_is_set(clean_env):
    serve_environment(settings(ingress=1, direct=False))
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT" not in os.environ


def test_serves_port_range_excludes_its_end_as_the_arithmetic_above_assumes():
    from ray.serve._private.node_port_manager import NoAvailablePortError, PortAllocator

    ports = PortAllocator(9100, 9102, "http", "node")
    assert sorted([ports.allocate("a"), ports.allocate("b")]) == [9100, 9101]
    with pytest.raises(NoAvailablePortError):
        ports.allocate("c")
