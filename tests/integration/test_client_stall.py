"""A client that stops reading does not hold its request forever. Real processes: `hfx up` on
SIMULATED workers (a fast latency profile and a long context, so an answer outgrows every socket
buffer between the router and the client) and a second router with a 2 s stall timeout. A client
that opens a long stream over HTTP, and one over gRPC, then never reads again: the router ends
each request (the scheduler's in-flight count returns to zero while the clients still hold their
connections) and counts it as a stall."""

from __future__ import annotations

import json
import shutil
import socket

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import grpcutil
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.sim.profiles import PROFILES, profile_to_dict
from tests.harness import extra_router, local_cluster, wait_until

pytestmark = pytest.mark.slow

LONG = 150_000   # tokens: ~20 MB of SSE events, far more than the sockets buffer


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import dataclasses

    from services.common.domain import LatencyModel

    folder = tmp_path_factory.mktemp("stall")
    model = folder / "model"
    shutil.copytree(ensure_default_model(), model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = LONG + 1000
    (model / "config.json").write_text(json.dumps(config))
    fast = dataclasses.replace(PROFILES["cpu-tiny"], name="fast", model=LatencyModel(0.05, 0.0, 0.0, 0.0, 0.0029))
    (folder / "fast.json").write_text(json.dumps(profile_to_dict(fast)))
    # Every engine step its own message and SSE event (no coalescing window): the answer's bytes
    # then outgrow the sockets' buffers long before the profile's 65,536 KV tokens run out (with
    # the default 10 ms window ~18 tokens share an event, and ~1 MB of events fits the buffers).
    with local_cluster(folder / "home", workers=1, engine="sim", model=str(model),
                       worker_args=("--sim-profile", str(folder / "fast.json"), "--session-coalesce-ms", "0")) as running:
        with extra_router(running, "--client-stall-timeout-s", "2") as router:
            yield running, router


def _inflight(scheduler: str) -> int:
    with grpcutil.sync_channel(scheduler) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(
            scheduler_pb2.GetClusterStateRequest(), timeout=5).inflight_requests


def _stalls(router, door: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{router.http_port}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "hfx_router_client_stalls_total" and s.labels.get("door") == door)


def test_an_http_client_that_stops_reading_loses_its_request_not_the_cluster(mesh):
    cluster, router = mesh
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", router.http_port))
    try:
        body = json.dumps({"prompt": "hello", "max_tokens": LONG, "stream": True, "ignore_eos": True}).encode()
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: hfx\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert wait_until(lambda: _inflight(cluster.state.scheduler) == 1, 15)
        # ... and never reads: the router's writes block, and after 2 s it ends the request
        assert wait_until(lambda: _stalls(router, "http") == 1, 60), router.log.read_text()[-3000:]
        assert wait_until(lambda: _inflight(cluster.state.scheduler) == 0, 15)
    finally:
        client.close()


def test_a_grpc_client_that_stops_reading_loses_its_request_not_the_cluster(mesh):
    cluster, router = mesh
    # without BDP probing the client's window stays at 64 KiB, so a client that does not read
    # pushes back on the router within a few thousand tokens (as a slow link would)
    with grpc.insecure_channel(f"127.0.0.1:{router.port}", options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stream = router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=[5, 6, 7]),
            sampling=common_pb2.SamplingParams(max_tokens=LONG, ignore_eos=True)), timeout=120)
        assert next(stream).HasField("delta")   # the first token arrives; then the client stops reading
        assert wait_until(lambda: _stalls(router, "grpc") == 1, 60), router.log.read_text()[-3000:]
        assert wait_until(lambda: _inflight(cluster.state.scheduler) == 0, 15)
        stream.cancel()
