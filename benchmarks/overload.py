"""Overload: the mesh at 10x its goodput, with a third of the clients cancelling.

Starts a local cluster (`hfx up`, hfx policy, engine sim: SIMULATED workers with a slow latency
profile, so that a few requests per second fill them and the load generator on this machine can
send ten times that) and drives it open loop (Poisson arrivals, gRPC, one asyncio client):

  1. `--calibrate-s` at `--goodput-rps` (the cluster's goodput: SLO attainment should be near 90%),
  2. `--overload-s` at `--factor` times that, a third of the requests cancelled by their client
     after a random 0.05-1 s,
  3. a quiet `--settle-s`.

Reports how every request ended (completed, cancelled, refused with a clear error and a retry
hint, failed without one, lost), the router's and the scheduler's RSS over time, the scheduler's
decision-time p99 (from its histogram: an upper bound, the bucket edge), and the in-flight counts
at the scheduler and the router after the load. Goals (issue 14): every failure a 429/503 or
RESOURCE_EXHAUSTED/UNAVAILABLE with a reason and a retry hint; RSS flat; decision p99 < 5 ms; in
flight back to 0.

  python benchmarks/overload.py --json benchmarks/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.common import grpcutil, procs
from services.common.domain import LatencyModel
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.local import cluster
from services.sim.profiles import PROFILES, profile_to_dict

MAX_TOKENS = 32
CLEAR = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


def slow_profile(path: Path) -> str:
    """cpu-tiny ten times slower, two sequences at a time: ~1 req/s per worker (SIMULATED)."""
    base = PROFILES["cpu-tiny"]
    m = base.model
    slow = dataclasses.replace(base, name="slow", max_num_seqs=2, model=LatencyModel(
        m.c0_ms * 10, m.c1_ms_per_prefill_token * 10, m.c2_ms_per_decode_seq * 10, m.c3_ms_per_kv_token * 10,
        m.kv_transfer_ms_per_token))
    path.write_text(json.dumps(profile_to_dict(slow)))
    return str(path)


@dataclasses.dataclass
class Tally:
    outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    slo_met: int = 0
    examples: dict = dataclasses.field(default_factory=dict)


async def one(stub, rng: random.Random, cancel: bool, timeout_s: float, tally: Tally) -> None:
    prompt = [rng.randrange(5, 1000) for _ in range(rng.randrange(8, 64))]
    call = stub.Generate(router_pb2.GenerateRequest(
        token_ids=router_pb2.TokenIds(ids=prompt), slo=common_pb2.Slo(ttft_ms=1000, tpot_ms=150),
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)), timeout=timeout_s)
    if cancel:
        asyncio.get_running_loop().call_later(rng.uniform(0.05, 1.0), call.cancel)
    final = None
    try:
        async for msg in call:
            if msg.HasField("final"):
                final = msg.final
    except asyncio.CancelledError:
        tally.outcomes["cancelled"] += 1
        return
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED and cancel:
            tally.outcomes["cancelled"] += 1
        elif err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.outcomes["lost"] += 1
        else:
            hint = dict(await call.trailing_metadata() or ()).get("retry-after-ms")
            kind = "refused_clear" if err.code() in CLEAR and err.details() and hint else "failed_unclear"
            tally.outcomes[kind] += 1
            tally.examples.setdefault(f"{kind}/{err.code().name}", f"{err.details()} (retry-after-ms {hint})")
        return
    if final is None or final.usage.completion_tokens != MAX_TOKENS:
        tally.outcomes["wrong"] += 1
        return
    tally.outcomes["completed"] += 1
    tally.slo_met += int(final.slo_met)


async def drive(router: str, rate: float, seconds: float, cancel_share: float, seed: int,
                timeout_s: float) -> Tally:
    rng, tally, tasks = random.Random(seed), Tally(), []
    async with grpcutil.aio_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(stub, rng, rng.random() < cancel_share, timeout_s, tally)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return tally


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def decision_buckets(address: str) -> dict[float, float]:
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {float(s.labels["le"]): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "hfx_scheduler_decision_seconds_bucket"}


def p99_bound(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """The bucket edge under which 99% of the decisions in between fell, and their count."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts.get(float("inf"), 0.0)
    for le in sorted(counts):
        if total and counts[le] >= 0.99 * total:
            return le, int(total)
    return float("nan"), int(total)


def inflight(state) -> tuple[int, float]:
    with grpcutil.sync_channel(state.scheduler) as channel:
        sched = scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(
            scheduler_pb2.GetClusterStateRequest(), timeout=5).inflight_requests
    text = httpx.get(f"http://{state.http}/metrics", timeout=5).text
    router = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "hfx_router_inflight_requests")
    return sched, router


async def sample_rss(state, stop: asyncio.Event, out: list) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((round(time.monotonic() - t0, 1), rss_mib(state.pgids["router"]), rss_mib(state.pgids["scheduler"])))
        try:
            await asyncio.wait_for(stop.wait(), 5)
        except asyncio.TimeoutError:
            pass


async def run(args, state) -> dict:
    rss: list = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(state, stop, rss))
    calm = await drive(state.router, args.goodput_rps, args.calibrate_s, 0.0, args.seed, args.request_timeout_s)
    print(f"calibration at {args.goodput_rps} req/s: {dict(calm.outcomes)}, SLO met {calm.slo_met}",
          file=sys.stderr, flush=True)
    before = decision_buckets(state.metrics["scheduler"])
    hot = await drive(state.router, args.goodput_rps * args.factor, args.overload_s, 1 / 3, args.seed + 1,
                      args.request_timeout_s)
    after = decision_buckets(state.metrics["scheduler"])
    await asyncio.sleep(args.settle_s)
    stop.set()
    await sampler
    p99, decisions = p99_bound(before, after)
    sched_left, router_left = inflight(state)
    return {"goodput_rps": args.goodput_rps, "factor": args.factor, "overload_s": args.overload_s,
            "calibration": dict(calm.outcomes), "calibration_slo_met": calm.slo_met,
            "overload": dict(hot.outcomes), "overload_slo_met": hot.slo_met, "examples": hot.examples,
            "decision_p99_bound_s": p99, "decisions": decisions, "inflight_after": {"scheduler": sched_left,
                                                                                    "router": router_left},
            "rss_mib": [{"t_s": t, "router": r, "scheduler": s} for t, r, s in rss]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="SIMULATED workers (default %(default)s)")
    parser.add_argument("--goodput-rps", type=float, default=2.0,
                        help="the cluster's goodput with the slow profile (default %(default)s)")
    parser.add_argument("--factor", type=float, default=10.0, help="overload factor (default %(default)s)")
    parser.add_argument("--calibrate-s", type=float, default=30.0)
    parser.add_argument("--overload-s", type=float, default=120.0)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--request-timeout-s", type=float, default=60.0,
                        help="a request with no answer this long counts as lost (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hfx-overload-") as tmp:
        home = Path(tmp)
        state = cluster.up(cluster.UpOptions(
            home=home, model=str(ensure_default_model()), workers=args.workers, router_port=procs.free_port(),
            redis_url=None, policy="hfx", engine="sim", tracing="off", timeout_s=300, http_port=procs.free_port(),
            worker_args=("--sim-profile", slow_profile(home / "slow.json"))))
        try:
            result = asyncio.run(run(args, state))
        finally:
            cluster.down(home, quiet=True)
    hot = result["overload"]
    sent = sum(hot.values())
    print(f"overload {args.factor:g}x{args.goodput_rps:g} req/s for {args.overload_s:.0f}s: {sent} requests")
    for kind in ("completed", "cancelled", "refused_clear", "failed_unclear", "wrong", "lost"):
        print(f"  {kind:<16}{hot.get(kind, 0):>7}")
    for key, detail in sorted(result["examples"].items()):
        print(f"  e.g. {key}: {detail[:160]}")
    rss = result["rss_mib"]
    print(f"RSS MiB router {rss[0]['router']:.0f} -> max {max(r['router'] for r in rss):.0f} -> {rss[-1]['router']:.0f}; "
          f"scheduler {rss[0]['scheduler']:.0f} -> max {max(r['scheduler'] for r in rss):.0f} -> {rss[-1]['scheduler']:.0f}")
    print(f"decision p99 <= {result['decision_p99_bound_s'] * 1000:g} ms over {result['decisions']} decisions")
    print(f"in flight after: scheduler {result['inflight_after']['scheduler']}, router {result['inflight_after']['router']:g}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    bad = hot.get("failed_unclear", 0) + hot.get("wrong", 0) + hot.get("lost", 0)
    return 0 if not bad and not result["inflight_after"]["scheduler"] and not result["inflight_after"]["router"] else 1


if __name__ == "__main__":
    sys.exit(main())
