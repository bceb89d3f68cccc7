"""Profiling an engine through the Engine seam, for its step-time model.

Prefill: one request at a time with a prompt of L tokens and max_tokens=1; its time to first
token is one step with L prefill tokens (lengths stay within one step's token budget). Decode:
n requests of P prompt tokens at once; once all of them are decoding, the gaps between request
0's tokens are steps with n decode sequences and n*(P + position) KV tokens. The samples are
fitted by services.scheduler.latency.fit. Prompts are fresh random ids per probe, so a prefix
cache never serves one. Time comes from `now_s` (the engine's own clock for a simulated one).

An engine that times its own steps (`engine_timed_steps`, vLLM: the engine core's clock, see
vllm_engine.engine_step_ms) is measured from those instead of client-side gaps, which carry
request admission, streaming and event-loop delays: prefill steps are taken while one background
request decodes (so the step is timed by that request's inter-token gap and the prefill lands in
one step of L prompt tokens + 1 decode), decode steps are the engine's steps with exactly n
decodes and no prefill. After a warm-up, each grid point becomes ONE sample: the median of its
steps (prefill: of its repeats), so one slow step (a GC pause, a neighbour) does not tilt the fit.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.domain import Sampling, StepSample
from services.scheduler.latency import Fit, fit
from services.sim.profiles import Profile, profile_to_dict
from services.worker.engine.base import DeclaresProfile, Engine, EngineRequest, HasStepBudget, TimesItsSteps


SEGMENT = 4  # decode tokens per timed segment


@dataclass(frozen=True)
class ProfileGrid:
    prefill_lengths: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_prompt_lengths: tuple[int, ...]
    decode_tokens: int           # tokens generated per decode probe
    repeats: int                 # prefill probes per length


# ~2-5 s for the tiny model on a CPU: what a worker runs at start.
QUICK = ProfileGrid((16, 64, 128, 256, 384, 512), (1, 4, 16), (64, 512), 14, 2)
# `hfx profile`: a finer grid, still well under a minute for the tiny model on this CPU.
FULL = ProfileGrid((16, 32, 64, 128, 192, 256, 320, 384, 448, 512), (1, 2, 4, 8, 16, 32),
                   (32, 256, 768), 26, 3)


class Profiler:
    def __init__(self, engine: Engine, vocab_size: int, now_s: Callable[[], float] = time.monotonic,
                 seed: int = 0, progress: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.vocab_size = vocab_size
        self.now_s = now_s
        self._rng = random.Random(seed)
        self._n = 0
        self._steps_seen = 0
        self.raw: list[StepSample] = []  # engine-timed steps seen while measuring (for their error)
        self.progress = progress or (lambda what: None)

    def _prompt(self, length: int) -> list[int]:
        # Ids 4.. leave special tokens (bos/eos/pad/unk of the tiny model) alone.
        return [self._rng.randrange(4, self.vocab_size) for _ in range(length)]

    def _request(self, length: int, max_tokens: int) -> EngineRequest:
        self._n += 1
        return EngineRequest(f"profile-{self._n}", self._prompt(length),
                             Sampling(max_tokens=max_tokens, ignore_eos=True))

    async def prefill(self, length: int) -> StepSample:
        start = self.now_s()
        async for out in self.engine.generate(self._request(length, 1)):
            if out.new_token_ids:
                return StepSample(length, 0, length, (self.now_s() - start) * 1000.0)
        raise RuntimeError(f"profile prefill of {length} tokens produced no token")

    async def decode(self, batch: int, prompt: int, tokens: int) -> list[StepSample]:
        times: list[list[float]] = [[] for _ in range(batch)]

        async def one(i: int) -> None:
            async for out in self.engine.generate(self._request(prompt, tokens)):
                now = self.now_s()
                times[i].extend([now] * len(out.new_token_ids))

        await asyncio.gather(*(one(i) for i in range(batch)))
        all_decoding = max(t[0] for t in times if t)
        own = times[0]
        steady = [pos for pos in range(len(own)) if own[pos] >= all_decoding]
        # Mean step over segments of SEGMENT tokens, not single gaps: a stream's tokens may reach
        # the consumer in bursts (a busy event loop), which splits one gap into a long and a short.
        out = []
        for i in range(0, len(steady) - SEGMENT, SEGMENT):
            a, b = steady[i], steady[i + SEGMENT]
            if own[b] > own[a]:
                mid = (a + b) // 2
                out.append(StepSample(0, batch, batch * (prompt + mid), (own[b] - own[a]) * 1000.0 / (b - a)))
        return out

    async def run(self, grid: ProfileGrid) -> list[StepSample]:
        if isinstance(self.engine, TimesItsSteps) and self.engine.engine_timed_steps:
            return await self.run_engine_timed(grid)
        samples: list[StepSample] = []
        await self.prefill(grid.prefill_lengths[0])  # warm-up, not kept
        for length in grid.prefill_lengths:
            for _ in range(grid.repeats):
                samples.append(await self.prefill(length))
            self.progress(f"prefill {length}")
        for prompt in grid.decode_prompt_lengths:
            for batch in grid.decode_batches:
                samples.extend(await self.decode(batch, prompt, grid.decode_tokens))
                self.progress(f"decode {batch}x{prompt}")
        return samples


    # --- engine-timed probes -------------------------------------------------------------------

    def _new_steps(self) -> list[StepSample]:
        """The engine steps recorded since the last call (polled often enough that its recent-steps
        window never overflows between calls)."""
        st = self.engine.stats()
        new = max(0, min(len(st.recent_steps), st.steps_total - self._steps_seen))
        self._steps_seen = st.steps_total
        steps = list(st.recent_steps[len(st.recent_steps) - new:]) if new else []
        self.raw.extend(steps)
        return steps

    async def _background(self, stop: asyncio.Event) -> None:
        """One request decoding until `stop`, restarted whenever it reaches its max_tokens."""
        budget = max(16, min(1024, (self.engine.max_model_len or 2048) - 64))
        while not stop.is_set():
            stream = self.engine.generate(self._request(16, budget))
            try:
                async for _ in stream:
                    if stop.is_set():
                        break
            finally:
                await stream.aclose()

    async def prefill_engine_timed(self, lengths: list[int]) -> list[StepSample]:
        """For each length, the engine step that ran its prompt next to one decoding request."""
        stop = asyncio.Event()
        bg = asyncio.create_task(self._background(stop))
        found: list[StepSample] = []
        try:
            while not any(s.decode_seqs > 0 for s in self._new_steps()):  # background is decoding
                await asyncio.sleep(0.002)
            for length in lengths:
                self._new_steps()
                async for out in self.engine.generate(self._request(length, 1)):
                    if out.new_token_ids:
                        break
                await asyncio.sleep(0.01)  # a few more background steps, so the prefill's is recorded
                hits = [s for s in self._new_steps() if s.prefill_tokens == length and s.decode_seqs > 0]
                if hits:
                    found.append(hits[0])
        finally:
            stop.set()
            await bg
        return found

    async def decode_engine_timed(self, batch: int, prompt: int, tokens: int) -> StepSample | None:
        steps: list[StepSample] = []
        self._new_steps()

        async def one(i: int) -> None:
            async for _ in self.engine.generate(self._request(prompt, tokens)):
                if i == 0:
                    steps.extend(self._new_steps())

        await asyncio.gather(*(one(i) for i in range(batch)))
        steps.extend(self._new_steps())
        pure = [s.step_ms for s in steps if s.prefill_tokens == 0 and s.decode_seqs == batch]
        if not pure:
            return None
        return StepSample(0, batch, batch * (prompt + tokens // 2), statistics.median(pure))

    async def run_engine_timed(self, grid: ProfileGrid) -> list[StepSample]:
        self._steps_seen = self.engine.stats().steps_total
        # Warm-up, not kept: the first steps of each shape pay for allocations and kernel selection.
        await self.prefill_engine_timed(list(grid.prefill_lengths))
        await self.decode_engine_timed(max(grid.decode_batches), grid.decode_prompt_lengths[0], grid.decode_tokens)
        self.raw.clear()
        samples: list[StepSample] = []
        found = await self.prefill_engine_timed([n for n in grid.prefill_lengths for _ in range(grid.repeats)])
        for length in grid.prefill_lengths:
            same = [s for s in found if s.prefill_tokens == length]
            if same:
                samples.append(StepSample(length, 1, int(statistics.median(s.kv_tokens for s in same)),
                                          statistics.median(s.step_ms for s in same)))
            self.progress(f"prefill {length}")
        for prompt in grid.decode_prompt_lengths:
            for batch in grid.decode_batches:
                sample = await self.decode_engine_timed(batch, prompt, grid.decode_tokens)
                if sample is not None:
                    samples.append(sample)
                self.progress(f"decode {batch}x{prompt}")
        return samples


def probes(grid: ProfileGrid) -> int:
    """How many progress steps `Profiler.run` reports (for a progress bar)."""
    return len(grid.prefill_lengths) + len(grid.decode_batches) * len(grid.decode_prompt_lengths)


async def profile_engine(engine: Engine, vocab_size: int, grid: ProfileGrid = QUICK,
                         now_s: Callable[[], float] = time.monotonic,
                         progress: Callable[[str], None] | None = None,
                         raw: list[StepSample] | None = None) -> tuple[Fit, list[StepSample]]:
    """Fit over the grid's samples; `raw`, when given, receives the engine-timed steps behind them."""
    profiler = Profiler(engine, vocab_size, now_s, progress=progress)
    samples = await profiler.run(grid)
    if raw is not None:
        raw.extend(profiler.raw)
    return fit(samples), samples


def vocab_size_of(model_dir: str) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("vocab_size", 32000))


def measured_profile(result: Fit, engine: Engine, name: str, max_num_seqs: int) -> Profile:
    """A Profile from a fit: KV capacity and step budget from the engine where it knows them."""
    return Profile(name, result.model, engine.stats().kv_capacity_tokens or 65_536,
                   (engine.chunk_tokens if isinstance(engine, HasStepBudget) else 0) or 2048, max_num_seqs,
                   step_noise=round(result.mape, 4), note=f"measured by `hfx profile`: {name}")


def declared_profile(engine: Engine) -> Profile | None:
    """A simulated engine's declared latency profile; None for an engine whose profile is measured."""
    declared = engine.profile if isinstance(engine, DeclaresProfile) else None
    return declared if isinstance(declared, Profile) else None


async def startup_profile(engine: Engine, engine_name: str, model_dir: str, max_num_seqs: int) -> dict:
    """What a worker stores in Redis at start: a quick measured profile, or for a simulated engine
    the model it simulates (measuring a simulator only adds noise to a known answer)."""
    declared = declared_profile(engine)
    if engine_name == "sim" and declared is not None:
        return profile_to_dict(declared, engine="sim", source=f"declared: simulated profile {declared.name}")
    started = time.monotonic()
    result, contention, attempts = await _quiet_profile(engine, vocab_size_of(model_dir))
    prof = measured_profile(result, engine, f"{engine_name}-at-start", max_num_seqs)
    return profile_to_dict(prof, engine=engine_name, source="measured at worker start (quick grid)",
                           fit={"r2": result.r2, "mape": result.mape, "samples": result.samples,
                                "seconds": round(time.monotonic() - started, 2),
                                "others_cpu_cores": round(contention, 2), "attempts": attempts})


# Worker-start profiling waits for a quiet machine: other processes (another engine booting or
# profiling on the same cores) must use at most QUIET_CORES on average, checked over QUIET_WINDOW_S;
# a profile taken while others used more is retried (up to PROFILE_ATTEMPTS, after a random pause
# so two workers that started together fall out of step). All the waits together last at most
# QUIET_WAIT_S: on a machine that is never quiet the worker profiles anyway (the least contended
# attempt is kept, its contention recorded) and registers, instead of waiting
# PROFILE_ATTEMPTS x QUIET_WAIT_S (a 3-minute start once made CI's 240 s readiness wait run out).
QUIET_CORES = 0.5
QUIET_WINDOW_S = 1.0
QUIET_WAIT_S = 60.0
PROFILE_ATTEMPTS = 3


async def wait_quiet(max_wait_s: float = QUIET_WAIT_S, cores: float = QUIET_CORES,
                     window_s: float = QUIET_WINDOW_S) -> float:
    """Waits until other processes use <= `cores` over a window (or `max_wait_s` ran out); returns
    the last window's figure (0 where /proc is not there to ask)."""
    from services.worker.contention import cpu_sample, others_cores

    deadline = time.monotonic() + max_wait_s
    while True:
        a, t0 = cpu_sample(), time.monotonic()
        await asyncio.sleep(window_s)
        b, t1 = cpu_sample(), time.monotonic()
        if a is None or b is None:
            return 0.0
        busy = others_cores(a, b, t1 - t0)
        if busy <= cores or time.monotonic() >= deadline:
            return busy


async def _quiet_profile(engine: Engine, vocab_size: int) -> tuple[Fit, float, int]:
    from services.worker.contention import cpu_sample, others_cores

    best: tuple[Fit, float] | None = None
    deadline = time.monotonic() + QUIET_WAIT_S   # one budget for every wait, pauses included
    for attempt in range(1, PROFILE_ATTEMPTS + 1):
        await wait_quiet(max(0.0, deadline - time.monotonic()))
        a, t0 = cpu_sample(), time.monotonic()
        result, _ = await profile_engine(engine, vocab_size, QUICK)
        b, t1 = cpu_sample(), time.monotonic()
        busy = others_cores(a, b, t1 - t0) if a is not None and b is not None else 0.0
        if best is None or busy < best[1]:
            best = (result, busy)
        if busy <= QUIET_CORES or time.monotonic() >= deadline:
            return best[0], best[1], attempt
        await asyncio.sleep(min(random.uniform(1.0, 5.0), max(0.0, deadline - time.monotonic())))
    if best is None:
        raise RuntimeError("no profiling attempt ran (PROFILE_ATTEMPTS < 1)")
    return best[0], best[1], PROFILE_ATTEMPTS
