"""Two routers side by side over one scheduler and its workers: both serve; one dies (SIGKILL)
in the middle of a long stream, and the scheduler lets its placement go (the worker's reports no
longer list it) instead of counting it forever, while the other router goes on serving. Real
processes (`hfx up` on SIMULATED workers plus a second `hfx router`), real gRPC over loopback."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from services.common import grpcutil
from services.common.pb.hfx.v1 import (common_pb2, router_pb2, router_pb2_grpc, scheduler_pb2,
                                       scheduler_pb2_grpc)
from tests.harness import extra_router, local_cluster, wait_until

pytestmark = pytest.mark.slow


def _generate(address: str, max_tokens: int) -> router_pb2.FinalResult:
    with grpcutil.sync_channel(address) as channel:
        messages = list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=[5, 6, 7, 8]),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)), timeout=60))
    return messages[-1].final


def _inflight(scheduler: str) -> int:
    with grpcutil.sync_channel(scheduler) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(
            scheduler_pb2.GetClusterStateRequest(), timeout=5).inflight_requests


def test_two_routers_serve_and_a_dead_ones_placements_are_let_go(tmp_path):
    with local_cluster(tmp_path / "home", workers=2, engine="sim") as mesh:
        with extra_router(mesh) as second:
            port = second.port
            assert _generate(mesh.state.router, 4).usage.completion_tokens == 4
            assert _generate(f"127.0.0.1:{port}", 4).usage.completion_tokens == 4
            # A long stream through the second router; it dies after the first tokens.
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stream = router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
                token_ids=router_pb2.TokenIds(ids=[9, 10, 11]),
                sampling=common_pb2.SamplingParams(max_tokens=100_000 // 100, ignore_eos=True)), timeout=60)
            next(iter(stream))
            assert _inflight(mesh.state.scheduler) == 1
            os.kill(second.proc.pid, signal.SIGKILL)
            second.proc.wait(10)
            channel.close()
            # the worker stops the request (its session ended) and, once its report no longer
            # lists it, the scheduler lets the placement go: nothing leaks
            assert wait_until(lambda: _inflight(mesh.state.scheduler) == 0, 15), _inflight(mesh.state.scheduler)
            assert _generate(mesh.state.router, 4).usage.completion_tokens == 4   # the first one goes on
    assert "let go 1" in next(mesh.log_dir.glob("scheduler.log")).read_text()
