"""Autoscaling live, on SIMULATED workers (engine "sim") behind the real mesh (router, scheduler,
scaler, Redis): a burst brings a second worker up and it serves; after the burst the autoscaler
drains it and removes it, and every request, the ones in flight on it at the drain included,
finishes with all its tokens."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.common import grpcutil, store
from services.cli import main
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.harness import local_cluster, wait_until

pytestmark = pytest.mark.slow

TOKENS = 400          # ~1.5 s on a cpu-tiny sim worker: long enough to be in flight at a drain
AUTOSCALE = ("--autoscale", "--min", "1", "--max", "2", "--capacity-rps", "2", "--scale-down-cooldown-s", "8",
             "--warmup-s", "1", "--cold-start-s", "5", "--autoscale-tick-s", "1", "--autoscale-window-s", "6")


def one_request(address: str, results: list, lock: threading.Lock, prompt: int = 64, tokens: int = TOKENS) -> None:
    started = time.time()
    row = {"start": started, "instance": "", "tokens": 0, "finish": "", "error": ""}
    try:
        with grpcutil.sync_channel(address) as channel:
            stream = router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
                token_ids=router_pb2.TokenIds(ids=[5 + k % 500 for k in range(prompt)]),
                sampling=common_pb2.SamplingParams(max_tokens=tokens, ignore_eos=True)), timeout=120)
            for msg in stream:
                if msg.HasField("final"):
                    row["instance"] = msg.final.instance_id
                    row["tokens"] = msg.final.usage.completion_tokens
                    row["finish"] = common_pb2.FinishReason.Name(msg.final.finish_reason)
    except grpc.RpcError as err:
        row["error"] = f"{err.code().name}: {err.details()}"
    row["end"] = time.time()
    with lock:
        results.append(row)


def send(address: str, pool: ThreadPoolExecutor, rate_rps: float, duration_s: float, results, lock, **request) -> list:
    """Requests at `rate_rps` for `duration_s` (request: one_request's prompt and tokens)."""
    futures, t0 = [], time.monotonic()
    k = 0
    while time.monotonic() - t0 < duration_s:
        futures.append(pool.submit(one_request, address, results, lock, **request))
        k += 1
        time.sleep(max(0.0, t0 + k / rate_rps - time.monotonic()))
    return futures


def test_a_burst_scales_out_and_its_end_drains_and_removes_without_losing_a_request(tmp_path, capsys):
    with local_cluster(tmp_path / "home", workers=1, policy="hfx", engine="sim", http=True,
                       scaler_args=AUTOSCALE) as mesh:
        keys = Keys(mesh.state.redis_prefix)
        r = store.connect_sync(mesh.state.redis_url)

        def live() -> list[str]:
            return sorted(i.decode() for i in r.smembers(keys.instances()) if r.exists(keys.instance(i.decode())))

        results, lock = [], threading.Lock()
        with ThreadPoolExecutor(max_workers=64) as pool:
            # The burst: 6 req/s against 2 req/s of configured capacity per worker.
            burst = send(mesh.state.router, pool, 6.0, 20.0, results, lock)
            assert wait_until(lambda: len(live()) == 2, 30), f"no second worker: {live()}\n{mesh.logs()}"
            # A trickle after it, so the drained worker has requests in flight when it drains.
            trickle = send(mesh.state.router, pool, 1.0, 25.0, results, lock)
            for f in burst + trickle:
                f.result()
            # Either worker may go: the policy drains the one with least in flight, then the newest.
            assert wait_until(lambda: len(live()) == 1, 60, 0.5), f"not back to one worker: {live()}"
        decisions = [json.loads(r.get(k)) for k in r.scan_iter(f"{keys.prefix}:scale:*")]
        drains = [d for d in decisions if d["action"] == "drain"]
        removes = [d for d in decisions if d["action"] == "remove"]
        assert [d["action"] for d in decisions if d["action"] == "start"] and drains and removes
        assert all(d["reason"] for d in decisions)

        # Every request finished with all its tokens: none failed, aborted or was cut off.
        assert results and not [x for x in results if x["error"] or x["tokens"] != TOKENS], \
            [x for x in results if x["error"] or x["tokens"] != TOKENS][:5]
        on_new = [x for x in results if x["instance"] == "hfx-w1"]
        assert on_new, "the new worker took no traffic"
        (gone,) = {"hfx-w0", "hfx-w1"} - set(live())
        assert gone in {d["instance_id"] for d in removes}
        drained_at = min(d["at"] for d in drains if d["instance_id"] == gone)
        in_flight_at_drain = [x for x in results if x["instance"] == gone and x["start"] < drained_at < x["end"]]
        with capsys.disabled():
            print(f"\n{len(results)} requests, {len(on_new)} on hfx-w1; {gone} drained and removed with "
                  f"{len(in_flight_at_drain)} in flight at its drain; all finished with {TOKENS} tokens")

        assert main(["--home", str(mesh.home), "status"]) == 0
        out = capsys.readouterr().out
        assert "autoscale (hfx, local, 1-2): desired 1" in out and "last decision" in out
