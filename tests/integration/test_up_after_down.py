"""`hfx up` right after `hfx down`, on the same ports, after HTTP clients used the cluster: the
connections the router closed are in TIME_WAIT for up to a minute, and must not make `up` think
the ports are taken (issue 18). SIMULATED workers: the check under test is the port check."""

from __future__ import annotations

import json
import socket

import pytest

from services.cli import main
from services.common import procs
from tests.harness import local_cluster

pytestmark = pytest.mark.slow


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One request with `Connection: close`, read until the server closes: the server's side of
    the connection closes first, so it is the one left in TIME_WAIT on the router's port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_up_at_once_after_down_on_the_same_ports(tmp_path, capsys):
    home = tmp_path / "home"
    router_port = procs.free_port()
    http_port = procs.free_port(avoid=frozenset({router_port}))
    with local_cluster(home, workers=1, engine="sim", http=True, router_port=router_port, http_port=http_port):
        assert http_get(http_port, "/health")[0] == 200
        status, body = http_get(http_port, "/v1/models")
        assert status == 200 and json.loads(body)["data"]
    # `down` ran when the block ended. The precondition: the port is still "used" for a plain bind.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", http_port))

    try:
        assert main(["--home", str(home), "up", "--engine", "sim", "--workers", "1", "--no-profile-at-start",
                     "--router-port", str(router_port), "--http-port", str(http_port), "--detach"]) == 0
        assert http_get(http_port, "/health")[0] == 200
    finally:
        main(["--home", str(home), "down"])
    assert "already in use" not in capsys.readouterr().err


def test_up_returns_only_when_the_scheduler_can_place_on_every_worker(tmp_path):
    """The scheduler reads the registry every registry_refresh_s: `up` called the cluster ready
    when the workers had registered, and `make demo`'s burst right after went 8 of 8 to hfx-w0.
    A 3-s refresh makes the race all but certain: the scheduler's first read (at its start) sees
    no worker, and an `up` that returned once the workers registered would find it knowing fewer
    than three unless a read fell between the last registration and that return."""
    from services.common import grpcutil
    from services.common.pb.hfx.v1 import scheduler_pb2, scheduler_pb2_grpc

    with local_cluster(tmp_path / "home", workers=3, engine="sim", scheduler_args=("--registry-refresh-s", "3")) as mesh:
        with grpcutil.sync_channel(mesh.state.scheduler) as channel:
            state = scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(
                scheduler_pb2.GetClusterStateRequest(), timeout=5)
    assert sorted(i.instance_id for i in state.instances) == ["hfx-w0", "hfx-w1", "hfx-w2"]
