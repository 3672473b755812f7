"""Free TCP ports for the servers that benchmarks and tests start, picked below the kernel's ephemeral range.

Binding port 0 hands out a port from the ephemeral range, and so it does for every process that binds port 0
afterwards: Ray's own processes do as a cluster starts. Once Ray's dashboard agent took the port that had been picked
for our ingress a minute before the ingress bound it, and the app failed to deploy ("No available ports").
Below that range, a port goes only to whoever asks for it by number; and from 20000 up, above Ray's worker ports
(10002-19999 by default), where `ray start` refuses any port given to one of its components.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20_000  # above Ray's worker ports (10002-19999)
SPAN = 8  # ports after the one returned that must be free too (proxy, metrics, spare ingress ports: port + k)
_given: set[int] = set()  # handed out by this process: never twice, bound or not yet


def free_port() -> int:
    """A port that is free now, together with the SPAN ports after it, below the ephemeral range and not handed out
    before by this process."""
    top = _ephemeral_start() - SPAN
    if top - LOWEST < 1000:  # (an unusual port range: fall back to the kernel's choice)
        return _kernel_port()
    for _ in range(1000):
        port = random.randrange(LOWEST, top)
        if port not in _given and all(_bindable(p) for p in range(port, port + SPAN + 1)):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {LOWEST}..{top}")


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
