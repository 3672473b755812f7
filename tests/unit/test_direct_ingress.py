"""An ingress replica that died with connections open: its replacement must bind the same port at once
(deployments/direct_ingress.py). Real sockets, Serve's own server start, uvicorn; no Ray cluster needed."""

import asyncio
import inspect
import socket

import pytest
from ray.serve._private import replica as serve_replica
from ray.serve.config import HTTPOptions

from deployments.direct_ingress import make_ingress_port_rebindable


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve_then_die(start, port: int) -> None:
    """Serve one keep-alive request, then stop with the connection still open: the server side closes it first,
    which leaves it in TIME_WAIT on `port` (what a replica's death leaves behind)."""
    task, server = await start(app, HTTPOptions(host="127.0.0.1", port=port), event_loop=asyncio.get_running_loop())
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    server.should_exit = server.force_exit = True
    await asyncio.wait_for(task, 10)
    await reader.read()  # the server closed it
    writer.close()


async def restart_on_same_port(start) -> None:
    port = free_port()
    await serve_then_die(start, port)
    await serve_then_die(start, port)  # the replacement, on the port its predecessor's connections still hold


def test_without_the_fix_serve_cannot_rebind_a_port_with_time_wait_connections():
    unpatched = inspect.unwrap(serve_replica.start_asgi_http_server)
    with pytest.raises(RuntimeError, match="Failed to bind"):
        asyncio.run(restart_on_same_port(unpatched))


def test_the_replacement_ingress_binds_its_predecessors_port_at_once():
    make_ingress_port_rebindable()
    make_ingress_port_rebindable()  # idempotent: one wrapper
    assert inspect.unwrap(serve_replica.start_asgi_http_server) is not serve_replica.start_asgi_http_server
    assert serve_replica.start_asgi_http_server.__wrapped__.__name__ == "start_asgi_http_server"
    asyncio.run(restart_on_same_port(serve_replica.start_asgi_http_server))
