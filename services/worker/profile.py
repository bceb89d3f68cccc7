"""Profiling an engine through the Engine seam, for its step-time model.

Prefill: one request at a time with a prompt of L tokens and max_tokens=1; its time to first
token is one step with L prefill tokens (lengths stay within one step's token budget). Decode:
n requests of P prompt tokens at once; once all of them are decoding, the gaps between request
0's tokens are steps with n decode sequences and n*(P + position) KV tokens. The samples are
fitted by services.scheduler.latency.fit. Prompts are fresh random ids per probe, so a prefix
cache never serves one. Time comes from `now_s` (the engine's own clock for a simulated one).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.domain import Sampling, StepSample
from services.scheduler.latency import Fit, fit
from services.sim.profiles import Profile, profile_to_dict
from services.worker.engine.base import Engine, EngineRequest


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


def probes(grid: ProfileGrid) -> int:
    """How many progress steps `Profiler.run` reports (for a progress bar)."""
    return len(grid.prefill_lengths) + len(grid.decode_batches) * len(grid.decode_prompt_lengths)


async def profile_engine(engine: Engine, vocab_size: int, grid: ProfileGrid = QUICK,
                         now_s: Callable[[], float] = time.monotonic,
                         progress: Callable[[str], None] | None = None) -> tuple[Fit, list[StepSample]]:
    samples = await Profiler(engine, vocab_size, now_s, progress=progress).run(grid)
    return fit(samples), samples


def vocab_size_of(model_dir: str) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("vocab_size", 32000))


def measured_profile(result: Fit, engine: Engine, name: str, max_num_seqs: int) -> Profile:
    """A Profile from a fit: KV capacity and step budget from the engine where it knows them."""
    return Profile(name, result.model, engine.stats().kv_capacity_tokens or 65_536,
                   int(getattr(engine, "chunk_tokens", 0) or 2048), max_num_seqs,
                   step_noise=round(result.mape, 4), note=f"measured by `hfx profile`: {name}")


async def startup_profile(engine: Engine, engine_name: str, model_dir: str, max_num_seqs: int) -> dict:
    """What a worker stores in Redis at start: a quick measured profile, or for a simulated engine
    the model it simulates (measuring a simulator only adds noise to a known answer)."""
    declared = getattr(engine, "profile", None)
    if engine_name == "sim" and isinstance(declared, Profile):
        return profile_to_dict(declared, engine="sim", source=f"declared: simulated profile {declared.name}")
    started = time.monotonic()
    result, _ = await profile_engine(engine, vocab_size_of(model_dir), QUICK)
    prof = measured_profile(result, engine, f"{engine_name}-at-start", max_num_seqs)
    return profile_to_dict(prof, engine=engine_name, source="measured at worker start (quick grid)",
                           fit={"r2": result.r2, "mape": result.mape, "samples": result.samples,
                                "seconds": round(time.monotonic() - started, 2)})
