"""Role changes and P-D links over real gRPC and a real Redis (issue 11): worker services with
SIMULATED engines (their KV hand-off is emulated and labelled so), the scaler's servicer on a
loopback port. Bad input is refused with INVALID_ARGUMENT and changes nothing; a good change
updates the registry with its reason and re-links; a dead instance's links go once the
registry drops it, and the scheduler then pairs nothing with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from services.common import grpcutil, procs, redis_server, store
from services.common.keys import Keys
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, scaler_pb2, scaler_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.scaler.config import ScalerConfig
from services.scaler.linking import Linker
from services.scaler.server import ScalerServicer
from tests.integration.test_preemption import start_servicer

TTL_S = 1.0
ROLES = {"p0": common_pb2.ROLE_PREFILL, "d0": common_pb2.ROLE_DECODE, "d1": common_pb2.ROLE_DECODE}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("redis")
    port = procs.free_port()
    proc = redis_server.start(port, workdir, workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        redis_server.wait_ready(url)
        yield url
    finally:
        procs.stop_group(proc.pid, timeout_s=5)


async def _cluster(redis_url: str, prefix: str, body):
    """p0, d0, d1 registered (TTL 1 s, heartbeats from a task until a worker is 'killed') and a
    scaler servicer served on loopback; body(cluster, workers, scaler stub, heartbeats)."""
    model = str(ensure_default_model())
    cluster = store.ClusterStore(store.connect(redis_url), Keys(prefix))
    workers, beats = {}, {}
    for name, role in ROLES.items():
        server, engine, servicer, address = await start_servicer(name, model)
        servicer.info.address, servicer.info.role = address, role
        servicer.roles.cluster, servicer.roles.heartbeat_ttl_s = cluster, TTL_S
        await cluster.register(servicer.info, TTL_S)
        workers[name] = (server, engine, servicer)
        beats[name] = asyncio.create_task(_beat(cluster, servicer.info))
    scaler = ScalerServicer(ScalerConfig(model=model, scheduler_address="unused:1", log_dir=Path("/nonexistent")),
                            cluster)
    scaler.linker = scaler.roles.linker = Linker(cluster, ttl_s=TTL_S)
    server, _ = grpcutil.make_server([(scaler_pb2_grpc.add_ScalerServicer_to_server, scaler)], ["hfx.v1.Scaler"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpcutil.aio_channel(f"127.0.0.1:{port}") as ch:
            return await body(cluster, workers, scaler_pb2_grpc.ScalerStub(ch), beats)
    finally:
        for task in beats.values():
            task.cancel()
        await server.stop(None)
        for wserver, engine, _ in workers.values():
            await wserver.stop(None)
            await engine.shutdown()


async def _beat(cluster, info):
    while True:
        await cluster.register(info, TTL_S)
        await asyncio.sleep(0.2)


async def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


async def _roles(cluster) -> dict[str, int]:
    return {i.instance_id: i.role for i in await cluster.instances()}


def test_bad_role_changes_are_refused_with_invalid_argument_and_change_nothing(redis_url):
    async def body(cluster, workers, scaler, beats):
        async with grpcutil.aio_channel(workers["d0"][2].info.address) as ch:
            worker = worker_pb2_grpc.WorkerStub(ch)
            out = {
                "worker unset role": await _code(worker.SetRole(worker_pb2.SetRoleRequest(role=0), timeout=5)),
                "worker role 99": await _code(worker.SetRole(worker_pb2.SetRoleRequest(role=99), timeout=5)),
                "scaler unknown instance": await _code(scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
                    instance_id="nope", role=common_pb2.ROLE_DECODE), timeout=5)),
                "scaler unknown role": await _code(scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
                    instance_id="d0", role=7), timeout=5)),
                "scaler empty id": await _code(scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
                    role=common_pb2.ROLE_DECODE), timeout=5)),
                # p0 is the only prefill instance; d0 and d1 may prefill locally, so p0 -> decode is
                # fine, but both decodes -> prefill is not: the second would leave no decode.
                "scaler last decode": None,
            }
            first = await scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
                instance_id="d0", role=common_pb2.ROLE_PREFILL, reason="test"), timeout=10)
            out["scaler last decode"] = await _code(scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
                instance_id="d1", role=common_pb2.ROLE_PREFILL), timeout=5))
            async with grpcutil.aio_channel(workers["d1"][2].info.address) as ch1:
                out["worker last decode"] = await _code(worker_pb2_grpc.WorkerStub(ch1).SetRole(
                    worker_pb2.SetRoleRequest(role=common_pb2.ROLE_PREFILL), timeout=5))
            return out, first, await _roles(cluster)

    out, first, roles = asyncio.run(_cluster(redis_url, "bad", body))
    for name, (code, message) in out.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, message)
    assert "unknown role 0" in out["worker unset role"][1] and "unknown role 99" in out["worker role 99"][1]
    assert "unknown instance 'nope'" in out["scaler unknown instance"][1]
    assert "instance_id: must not be empty" in out["scaler empty id"][1]
    for name in ("scaler last decode", "worker last decode"):
        assert "changing d1 to prefill would leave the cluster unable to serve: no decode capacity" in out[name][1]
    assert first.changed and first.previous == common_pb2.ROLE_DECODE
    # Only the good change happened.
    assert roles == {"p0": common_pb2.ROLE_PREFILL, "d0": common_pb2.ROLE_PREFILL, "d1": common_pb2.ROLE_DECODE}


def test_a_role_change_records_its_reason_and_relinks_the_instance(redis_url):
    async def body(cluster, workers, scaler, beats):
        await scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(instance_id="p0", role=common_pb2.ROLE_PREFILL),
                             timeout=10)   # no change: it is one
        linker = Linker(cluster, ttl_s=TTL_S)
        await linker.step(await cluster.instances())
        before = set(await cluster.links())
        reply = await scaler.SetRole(scaler_pb2.ScalerSetRoleRequest(
            instance_id="d1", role=common_pb2.ROLE_PREFILL, reason="prefill pressed (test)"), timeout=10)
        entry = next(i for i in await cluster.instances() if i.instance_id == "d1")
        return before, reply, entry, await cluster.links(), await cluster.usable_links()

    before, reply, entry, links, usable = asyncio.run(_cluster(redis_url, "good", body))
    assert before == {("p0", "d0"), ("p0", "d1")}
    assert reply.changed and reply.previous == common_pb2.ROLE_DECODE and reply.links == 1
    assert entry.role == common_pb2.ROLE_PREFILL and entry.role_reason == "prefill pressed (test)"
    assert entry.role_changed_unix_s > 0
    # d1 now sends KV: linked to the one decode instance after a (simulated) warm-up transfer
    assert set(links) == {("p0", "d0"), ("d1", "d0")} and usable == frozenset(links)
    assert links[("d1", "d0")]["state"] == "up" and links[("d1", "d0")]["warmup_ms"] > 0


def test_a_dead_instances_links_go_once_the_registry_drops_it(redis_url):
    async def body(cluster, workers, scaler, beats):
        linker = Linker(cluster, ttl_s=TTL_S)
        await linker.step(await cluster.instances())
        linked = set(await cluster.links())
        beats["d0"].cancel()              # d0 dies: no more heartbeats, its entry expires after the TTL
        await workers["d0"][0].stop(None)
        for _ in range(40):
            await asyncio.sleep(0.1)
            if "d0" not in await _roles(cluster):
                break
        registry = await cluster.instances()
        await linker.step(registry)   # the scaler's loop does this every 0.5 s
        return linked, {i.instance_id for i in registry}, set(await cluster.links()), await cluster.usable_links()

    linked, live, links, usable = asyncio.run(_cluster(redis_url, "dead", body))
    assert linked == {("p0", "d0"), ("p0", "d1")}
    assert live == {"p0", "d1"}
    assert links == {("p0", "d1")} and usable == frozenset({("p0", "d1")})
