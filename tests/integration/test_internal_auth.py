"""No one let in: a local cluster's internal services (scheduler, scaler, workers) refuse calls
without the cluster's internal token, while the mesh itself (which presents it) serves, and health
checks stay open. Real processes (`hfx up` on SIMULATED workers), real gRPC over loopback."""

from __future__ import annotations

import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import grpcutil, internal_auth
from services.common.pb.hfx.v1 import (common_pb2, router_pb2, router_pb2_grpc, scaler_pb2, scaler_pb2_grpc,
                                       scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc)
from tests.harness import local_cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("auth") / "home", workers=1, engine="sim") as running:
        yield running


def _worker_address(mesh) -> str:
    def listed() -> str:
        with grpcutil.sync_channel(mesh.state.scheduler) as channel:   # with the token: allowed
            state = scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(
                scheduler_pb2.GetClusterStateRequest(), timeout=5)
        return state.instances[0].address if state.instances else ""
    address = wait_until(listed, 15)
    assert address, "the scheduler lists no instance"
    return address


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_the_token_file_is_the_owners_alone(mesh):
    path = mesh.home / internal_auth.TOKEN_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_text().strip()) == 64


def test_unauthenticated_calls_to_internal_services_are_refused(mesh):
    worker = _worker_address(mesh)
    plain = {name: grpc.insecure_channel(address) for name, address in
             (("worker", worker), ("scheduler", mesh.state.scheduler), ("scaler", mesh.state.scaler))}
    try:
        errors = [
            _refused(lambda: worker_pb2_grpc.WorkerStub(plain["worker"]).Drain(worker_pb2.DrainRequest(), timeout=5)),
            _refused(lambda: list(worker_pb2_grpc.WorkerStub(plain["worker"]).Generate(
                worker_pb2.WorkerGenerateRequest(request_id="x", prompt_token_ids=[1, 2]), timeout=5))),
            _refused(lambda: scheduler_pb2_grpc.SchedulerStub(plain["scheduler"]).Place(
                scheduler_pb2.PlaceRequest(request_id="x", prompt_tokens=4, max_tokens=4), timeout=5)),
            _refused(lambda: scaler_pb2_grpc.ScalerStub(plain["scaler"]).Scale(
                scaler_pb2.ScaleRequest(decision_id="x", role=common_pb2.ROLE_COLOCATED, replicas=50), timeout=5)),
        ]
        for err in errors:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "internal" in err.details()
        # health stays open for orchestrators and `hfx up`
        reply = health_pb2_grpc.HealthStub(plain["worker"]).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for channel in plain.values():
            channel.close()


def test_a_wrong_token_is_refused_and_the_worker_kept_serving(mesh):
    worker = _worker_address(mesh)
    with grpc.insecure_channel(worker) as channel:
        err = _refused(lambda: worker_pb2_grpc.WorkerStub(channel).Drain(
            worker_pb2.DrainRequest(), timeout=5, metadata=((internal_auth.METADATA_KEY, "0" * 64),)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # nothing was drained: the public door still serves through the mesh, which has the token
    with grpc.insecure_channel(mesh.state.router) as channel:
        messages = list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=[5, 6, 7]), sampling=common_pb2.SamplingParams(max_tokens=4)),
            timeout=30))
    assert messages[-1].final.usage.completion_tokens == 4


def test_the_clusters_redis_refuses_clients_without_its_password(mesh):
    import pathlib

    import redis

    from services.common import store
    from services.common.keys import Keys

    path = mesh.home / internal_auth.REDIS_PASSWORD_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() not in (mesh.home / internal_auth.TOKEN_FILE_NAME).read_text()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(mesh.state.redis_url, socket_timeout=2).ping()
    # the mesh's own processes and `hfx` commands beside the cluster give it, and the registry is full
    client = store.connect_sync(mesh.state.redis_url)
    assert client.scard(Keys(mesh.state.redis_prefix).instances()) >= 1
    # the password is not on any command line of the cluster
    cmdlines = []
    for proc in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdlines.append(proc.read_bytes())
        except OSError:   # gone meanwhile
            pass
    assert not any(path.read_text().strip().encode() in c for c in cmdlines)
