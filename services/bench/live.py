"""The live benchmark: a workload's requests sent open-loop to a target at their arrival times.

Same workload generator, SLO scales, records and measurement as the simulator bench
(services.report.metrics), measured on the client: TTFT from the request's scheduled arrival to its
first token, TPOT over the decode phase. Arrivals never wait for earlier requests (open loop); a
bound on requests in flight keeps memory bounded, and time spent waiting for it counts against
the request. The run stops by itself: whatever has not finished by its deadline is failed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from services.common.domain import Slo
from services.bench.targets import LiveRequest, Target
from services.report.records import RequestRecord, RunResult
from services.sim.workload import SimRequestSpec, Workload

LOOSE_SLO_MS = 1e7     # probes must never be refused for their SLO
PROBE_TOKENS = 16


@dataclass(frozen=True)
class LiveOptions:
    max_inflight: int = 1024
    request_timeout_s: float = 120.0
    max_duration_s: float = 0.0      # 0: last arrival + request timeout
    send_class: bool = True


@dataclass(frozen=True)
class Unloaded:
    """The target's unloaded latency, measured by sequential probes."""

    ttft_ms: dict[str, float]        # per class, for the class's mean prompt
    tpot_ms: float

    def slos(self, workload: Workload) -> dict[str, Slo]:
        return {c.name: Slo(c.ttft_slo_scale * self.ttft_ms[c.name], c.tpot_slo_scale * self.tpot_ms)
                for c in workload.classes}


def prompt_ids(rng: random.Random, length: int, vocab_size: int) -> list[int]:
    # Ids from 4 up leave the usual special tokens (bos, eos, pad, unk) out of prompts.
    return [rng.randrange(4, vocab_size) for _ in range(length)]


async def probe(target: Target, workload: Workload, vocab_size: int, max_model_len: int, repeats: int = 3,
                timeout_s: float = 60.0, send_class: bool = True, warmups: int = 1) -> Unloaded:
    """Sequential requests on the idle target: TTFT of each class's mean prompt, TPOT overall.
    The first `warmups` of each class are not counted: a target spreads them over its instances,
    and each instance's first request of a new prompt length is slow (one per instance, at least)."""
    rng = random.Random(12345)
    ttft: dict[str, float] = {}
    tpots: list[float] = []
    for cls in workload.classes:
        length = max(1, min(int(cls.prompt_tokens.mean), max_model_len - PROBE_TOKENS - 1))
        samples = []
        for i in range(repeats + warmups):
            req = LiveRequest(prompt_ids(rng, length, vocab_size), PROBE_TOKENS, LOOSE_SLO_MS, LOOSE_SLO_MS,
                              cls.priority, cls.name if send_class else "")
            start = time.monotonic()
            res = await target.send(req, timeout_s)
            if res.verdict != "admit" or res.first_token_s is None:
                raise RuntimeError(f"probe of class {cls.name} on {target.name} failed: {res.verdict}: {res.reason}")
            samples.append((res.first_token_s - start) * 1000.0)
            if res.tokens > 1 and i >= warmups and res.last_token_s is not None:
                tpots.append((res.last_token_s - res.first_token_s) * 1000.0 / (res.tokens - 1))
        ttft[cls.name] = statistics.median(samples[warmups:])
    return Unloaded(ttft, statistics.median(tpots) if tpots else 1.0)


def with_slos(requests: Sequence[SimRequestSpec], slos: dict[str, Slo]) -> list[SimRequestSpec]:
    return [replace(r, spec=replace(r.spec, slo=slos[r.spec.task_class])) for r in requests]


async def run_live(target: Target, requests: Sequence[SimRequestSpec], vocab_size: int, seed: int,
                   opts: LiveOptions, progress: Callable[[int], None] | None = None,
                   instances: int = 0, prompt_salt: str = "") -> RunResult:
    """prompt_salt: prompts drawn from (seed, salt) instead of seed alone. A sweep passes the rate:
    the same seed gives every rate the same lengths, hence the same prompts, so a target whose
    KV cache kept an earlier rate's prompts served the next rate's from its prefix cache (issue
    9, twelfth session: vllm-router's engines, 10x HFX's KV, did; 34 ms summarise TTFTs at 12
    req/s where 8 req/s took 92)."""
    rng = random.Random(f"{seed}:{prompt_salt}") if prompt_salt else random.Random(seed)
    prompts = [prompt_ids(rng, r.spec.prompt_tokens, vocab_size) for r in requests]
    records = [RequestRecord(r.spec, r.output_tokens) for r in requests]
    inflight = asyncio.Semaphore(opts.max_inflight)
    done = 0
    t0 = time.monotonic() + 0.1

    async def one(i: int) -> None:
        nonlocal done
        r, rec = requests[i], records[i]
        await asyncio.sleep(max(0.0, t0 + r.spec.arrival_s - time.monotonic()))
        try:
            async with inflight:
                rec.placed_s = time.monotonic() - t0
                res = await target.send(LiveRequest(prompts[i], r.output_tokens, r.spec.slo.ttft_ms, r.spec.slo.tpot_ms,
                                                    r.spec.priority, r.spec.task_class if opts.send_class else ""),
                                        opts.request_timeout_s)
        except asyncio.CancelledError:
            rec.verdict, rec.reason = "failed", "not finished by the run's deadline"
            raise
        rec.verdict, rec.reason, rec.generated = res.verdict, res.reason, res.tokens
        rel = lambda t: None if t is None else t - t0  # noqa: E731
        rec.first_token_s, rec.last_token_s, rec.finish_s = rel(res.first_token_s), rel(res.last_token_s), rel(res.finish_s)
        if res.verdict == "admit" and res.tokens != r.output_tokens:
            rec.reason = f"asked for {r.output_tokens} tokens, got {res.tokens}"
        rec.output_tokens = res.tokens if res.verdict == "admit" else rec.output_tokens
        done += 1
        if progress is not None:
            progress(done)

    last_arrival = max((r.spec.arrival_s for r in requests), default=0.0)
    limit_s = opts.max_duration_s or last_arrival + opts.request_timeout_s + 5.0
    tasks = [asyncio.create_task(one(i)) for i in range(len(requests))]
    _, pending = await asyncio.wait(tasks, timeout=limit_s + 0.1)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for rec in records:
        if rec.verdict == "":
            rec.verdict, rec.reason = "failed", "not finished by the run's deadline"
    makespan = max((r.finish_s or 0.0 for r in records), default=0.0)
    return RunResult(records, instances * makespan, makespan, len(records), 0, 0)
