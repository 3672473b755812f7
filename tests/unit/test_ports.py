"""The ports benchmarks and tests give their servers come from below the ephemeral range, where no process that
binds port 0 (Ray's, as a cluster starts) can take them first, and are never handed out twice."""

import socket

from benchmarks.ports import SPAN, _ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_free_with_their_neighbours_and_never_given_twice():
    ports = [free_port() for _ in range(30)]
    assert len(set(ports)) == len(ports)
    assert all(port + SPAN < _ephemeral_start() for port in ports)
    for port in ports[:5]:
        for p in range(port, port + SPAN + 1):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", p))  # free: a server can take it


def test_a_port_in_use_or_with_a_neighbour_in_use_is_not_given(monkeypatch):
    with socket.socket() as held:
        for taken in range(21_000, 30_000):  # a port a server holds, below the ephemeral range
            try:
                held.bind(("127.0.0.1", taken))
                break
            except OSError:
                continue
        held.listen()
        candidates = iter([taken, taken - 2, taken + 100])  # (taken - 2: its port + 2 is the one in use)
        monkeypatch.setattr("benchmarks.ports.random.randrange", lambda *_: next(candidates))
        assert free_port() == taken + 100
