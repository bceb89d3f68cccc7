"""procs.port_free answers "is something listening", not "was the port used lately": a port whose
only trace is a connection in TIME_WAIT (what `hfx down` leaves after HTTP clients) is free, as
it is for our servers, which bind with SO_REUSEADDR."""

from __future__ import annotations

import errno
import socket
from concurrent import futures

import grpc
import pytest

from services.common import procs


def _listener(host: str = "127.0.0.1", port: int = 0, reuseport: bool = False) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen()
    return s


def _time_wait_port() -> int:
    """A loopback port left with one connection in TIME_WAIT and nothing listening: the server
    side closes first (as uvicorn does after a `Connection: close` request)."""
    server = _listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    conn, _ = server.accept()
    conn.close()                      # active close: this side ends in TIME_WAIT
    assert client.recv(1) == b""      # the client has seen the FIN ...
    client.close()                    # ... and answers with its own
    server.close()
    return port


def test_a_port_with_only_a_time_wait_connection_is_free():
    port = _time_wait_port()
    # The precondition: a plain bind (what the old check did) still fails on this port.
    with socket.socket() as plain, pytest.raises(OSError) as failed:
        plain.bind(("127.0.0.1", port))
    assert failed.value.errno == errno.EADDRINUSE
    assert procs.port_free(port)


def test_a_listening_port_is_busy():
    with _listener() as server:
        assert not procs.port_free(server.getsockname()[1])


def test_a_wildcard_listener_makes_the_loopback_port_busy():
    with _listener("0.0.0.0") as server:
        assert not procs.port_free(server.getsockname()[1])


def test_a_grpc_server_port_is_busy_although_grpc_sets_so_reuseport():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert not procs.port_free(port)
    finally:
        server.stop(grace=None)


def test_a_reuseport_listener_is_busy():
    with _listener(reuseport=True) as server:
        assert not procs.port_free(server.getsockname()[1])


def test_a_free_port_is_free():
    assert procs.port_free(procs.free_port())


def test_a_free_port_lies_below_the_ephemeral_range_so_no_outgoing_connection_can_take_it():
    low, _ = procs.ephemeral_range()
    if low - procs.PICK_FROM < 1000:
        pytest.skip(f"this machine's ephemeral range starts at {low}: no room below it")
    ports = {procs.free_port() for _ in range(20)}
    assert all(procs.PICK_FROM <= p < low for p in ports)
    assert len(ports) > 1   # random, so two clusters starting at once do not pick alike


def test_a_free_port_is_never_one_promised_to_another_process():
    first = procs.free_port()
    assert all(procs.free_port(avoid=frozenset({first})) != first for _ in range(50))
