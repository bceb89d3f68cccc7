"""Decision latency of one schedule() pass: 64 instances, 10,000 queued (`python -m services.sim.bench_decision`).

Steady state of an overloaded scheduler: every instance runs 16 requests; between passes arrivals
replace what the policy placed (at least 5), and two instances change their running
set (completions), as they would live. Timed on the wall clock here, outside the pure core.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import numpy as np

from services.common.domain import ClusterSnapshot, InstanceLoad, InstanceView, RequestSpec, RunningRequest, Slo
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim.profiles import get_profile
from services.sim.runner import WaitingQueue


def _spec(i: int, rng: random.Random, now_s: float) -> RequestSpec:
    return RequestSpec(f"q{i}", rng.randint(64, 4096), 512, Slo(rng.choice([60.0, 200.0, 2000.0]), rng.choice([8.0, 12.0])),
                       rng.choice([0, 1, 2]), rng.choice(["chat", "code", "batch"]), arrival_s=now_s)


def _running(i: int, rng: random.Random) -> RequestSpec:
    return RequestSpec(f"q{i}", rng.randint(64, 1024), 128, Slo(1000.0, 40.0), 1, "chat", arrival_s=-1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", default="hfx")
    p.add_argument("--instances", type=int, default=64)
    p.add_argument("--queued", type=int, default=10_000)
    p.add_argument("--passes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    prof = get_profile("cpu-tiny")
    policy = make_policy(args.policy, policy_config(prof))
    waiting = WaitingQueue()
    counter = 0
    for _ in range(args.queued):
        waiting.add(_spec(counter, rng, 0.0)); counter += 1
    views = [InstanceView(f"i{k:02d}", "", load=InstanceLoad(24, 0, 0.5, prof.kv_capacity_tokens),
                          running=tuple(RunningRequest(_running(10**7 + k * 100 + j, rng), -1.0) for j in range(16)),
                          latency_model=prof.model) for k in range(args.instances)]
    times_ms, decided = [], 0
    now_s = 0.0
    for n in range(args.passes):
        now_s += 0.005
        for _ in range(max(5, args.queued - len(waiting))):   # arrivals refill what was placed
            waiting.add(_spec(counter, rng, now_s)); counter += 1
        for k in rng.sample(range(len(views)), 2):   # a completion: new running tuple
            run = views[k].running
            views[k] = replace(views[k], running=run[1:] + (RunningRequest(_running(counter, rng), now_s),))
            counter += 1
        cluster = ClusterSnapshot(tuple(views))
        t0 = time.perf_counter()
        result = policy.schedule(waiting, cluster, now_s)
        times_ms.append((time.perf_counter() - t0) * 1000.0)
        for d in result.decisions:
            waiting.pop(d.request_id)
        decided += len(result.decisions)
    t = np.array(times_ms[10:])
    print(f"policy {args.policy}: {args.instances} instances, {args.queued} queued, {len(t)} passes: "
          f"decision latency p50 {np.percentile(t, 50):.3f} ms, p99 {np.percentile(t, 99):.3f} ms, "
          f"max {t.max():.3f} ms; {decided} decisions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
