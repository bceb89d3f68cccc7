"""The scaler's standby pool end to end (issue 12): `hfx up --d2d --standby-pool 1`.

On SIMULATED workers (engine "sim"): the pool, the donor choice, LoadWeights, registration and
the refill are the real services over real gRPC and Redis, and the weights cross for real (the
donor worker serves the checkpoint from memory; the standby receives the stream with every check,
then drops it, since a simulated engine computes nothing). The same path with real vLLM engines,
whose tokens depend on the pulled weights: tests/integration/test_standby_pool_vllm.py.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.cli import main
from services.common import grpcutil, store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from tests.harness import local_cluster, wait_until
from tests.integration.test_autoscale_live import send

pytestmark = pytest.mark.slow

POOL = ("--d2d", "--standby-pool", "1")


def registered(r, keys: Keys) -> dict[str, common_pb2.Instance]:
    out = {}
    for raw_id in r.smembers(keys.instances()):
        raw = r.hget(keys.instance(raw_id.decode()), "pb")
        if raw is not None:
            out[raw_id.decode()] = common_pb2.Instance.FromString(raw)
    return out


def pool_status(r, keys: Keys) -> dict:
    raw = r.get(keys.standby())
    return json.loads(raw) if raw else {}


def scale(mesh, replicas: int, decision_id: str) -> scaler_pb2.ScaleResponse:
    with grpcutil.sync_channel(mesh.state.scaler) as channel:
        return scaler_pb2_grpc.ScalerStub(channel).Scale(
            scaler_pb2.ScaleRequest(decision_id=decision_id, replicas=replicas, reason="test"), timeout=10)


def generate(mesh, tokens: int = 8) -> router_pb2.GenerateFinal:
    with grpcutil.sync_channel(mesh.state.router) as channel:
        for msg in router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
                token_ids=router_pb2.TokenIds(ids=list(range(5, 21))),
                sampling=common_pb2.SamplingParams(max_tokens=tokens, ignore_eos=True)), timeout=60):
            if msg.HasField("final"):
                return msg.final
    raise AssertionError("no final message")


def test_a_scale_up_takes_the_standby_which_pulls_from_the_donor_and_the_pool_refills(tmp_path, capsys):
    with local_cluster(tmp_path / "home", workers=1, engine="sim", scaler_args=POOL) as mesh:
        keys = Keys(mesh.state.redis_prefix)
        r = store.connect_sync(mesh.state.redis_url)
        # The first worker serves its weights; the standby is up, ready, and NOT registered.
        assert wait_until(lambda: registered(r, keys).get("hfx-w0") and registered(r, keys)["hfx-w0"].weights_address,
                          60), mesh.logs()
        assert wait_until(lambda: pool_status(r, keys).get("ready") == 1, 60), mesh.logs()
        standby = pool_status(r, keys)["members"][0]
        assert standby not in registered(r, keys)
        assert pool_status(r, keys)["rss_bytes"] > 0 and pool_status(r, keys)["instance_equivalents"] > 0
        donor_address = registered(r, keys)["hfx-w0"].weights_address
        # The ready standby is told its donor ahead (PrepareWeights: it maps the donor's files).
        assert wait_until(lambda: any("prepared its pull from donor hfx-w0" in p.read_text()
                                      for p in mesh.log_dir.glob("scaler*.log")), 30), mesh.logs()

        assert scale(mesh, 2, "standby-up-1").applied
        # The standby registers as itself, with weights from the donor's stream (every tensor checked).
        assert wait_until(lambda: standby in registered(r, keys), 30), mesh.logs()
        inst = registered(r, keys)[standby]
        assert inst.weights_source == f"donor {donor_address} over shm, mapped ahead", inst.weights_source
        # A replacement is started in the background; the hand-out is recorded with its donor.
        assert wait_until(lambda: (s := pool_status(r, keys)).get("ready") == 1 and standby not in s["members"], 60), \
            pool_status(r, keys)
        taken = pool_status(r, keys)["taken"][-1]
        assert taken["instance_id"] == standby and taken["donor"] == "hfx-w0" and taken["state"] == "loaded"
        # The adopted standby serves: requests reach both workers (least-load spreads them).
        served = {generate(mesh).instance_id for _ in range(6)}
        assert standby in served, served

        capsys.readouterr()
        assert main(["--home", str(mesh.home), "status"]) == 0
        out = capsys.readouterr().out
        assert "standby pool: 1 ready" in out and f"taken {standby}" in out and "donor hfx-w0" in out, out



AUTOSCALE = ("--autoscale", "--min", "1", "--max", "2", "--capacity-rps", "2", "--warmup-s", "1",
             "--cold-start-s", "30", "--autoscale-tick-s", "1", "--autoscale-window-s", "6",
             # A sim worker's cold start is measured at ~1 s: the standby must be expected sooner.
             "--standby-start-s", "0.2")


def test_the_autoscaler_starts_from_the_pool_and_pays_for_it(tmp_path):
    """A burst past one worker's configured capacity: the autoscaler's start takes the standby
    (its reason names the standby start kind), and its instance-seconds include the pool's."""
    with local_cluster(tmp_path / "home", workers=1, engine="sim", policy="hfx", http=True,
                       scaler_args=(*POOL, *AUTOSCALE)) as mesh:
        keys = Keys(mesh.state.redis_prefix)
        r = store.connect_sync(mesh.state.redis_url)
        assert wait_until(lambda: pool_status(r, keys).get("ready") == 1, 60), mesh.logs()
        standby = pool_status(r, keys)["members"][0]
        results, lock = [], threading.Lock()
        with ThreadPoolExecutor(max_workers=32) as pool:
            burst = send(mesh.state.router, pool, 6.0, 8.0, results, lock)
            assert wait_until(lambda: standby in registered(r, keys), 30), mesh.logs()
            for f in burst:
                f.result()
        status = json.loads(r.get(keys.autoscale()))
        starts = [json.loads(r.get(k)) for k in r.scan_iter(f"{keys.prefix}:scale:*")]
        # (Only the autoscaler starts workers here, so the standby's registration above was its start.)
        assert any(d["action"] == "start" and "cpu/standby" in d["reason"] for d in starts), starts
        assert status["standby_instance_seconds"] > 0
        assert status["instance_seconds"] > status["standby_instance_seconds"]
        assert not [row for row in results if row["error"]], results
