"""A live sweep gives each rate its own prompts, the same on every target (services/bench/live.py
run_live's prompt_salt; issue 9, twelfth session: the same seed gave every rate the same lengths,
hence the same prompts, and a target whose KV cache kept them served later rates from its prefix
cache)."""

from __future__ import annotations

import asyncio

from services.bench.live import LiveOptions, run_live
from services.bench.targets import LiveRequest, LiveResult
from services.sim.cli import DEFAULT_WORKLOAD
from services.sim.profiles import get_profile
from services.sim.workload import as_live, generate, load_workload


class Recorder:
    """A target that answers at once and keeps the prompts it was sent (run_live talks to it)."""

    name = "recorder"

    def __init__(self) -> None:
        self.prompts: list[tuple[int, ...]] = []

    async def send(self, req: LiveRequest, timeout_s: float, keep_times: bool = False) -> LiveResult:
        self.prompts.append(tuple(req.prompt_ids))
        return LiveResult(first_token_s=0.0, last_token_s=0.0, finish_s=0.0, tokens=req.max_tokens)

    async def close(self) -> None:
        pass


def _prompts(rate: float, salt: str) -> set[tuple[int, ...]]:
    profile = get_profile("cpu-tiny")
    requests = as_live(generate(load_workload(DEFAULT_WORKLOAD), rate, 20, 1, profile.model, profile.chunk_tokens), 2048)
    target = Recorder()
    asyncio.run(run_live(target, requests, 1000, 1, LiveOptions(), prompt_salt=salt))
    return set(target.prompts)


def test_each_rate_has_its_own_prompts_and_every_target_the_same_ones():
    # Arrivals are compressed so the run takes no time: only the prompts matter here.
    at_8, at_12 = _prompts(1000.0, "rate 8"), _prompts(1000.0, "rate 12")
    assert len(at_8) == 20 and not at_8 & at_12
    assert _prompts(1000.0, "rate 8") == at_8           # the next target gets the same ones
    assert _prompts(1000.0, "") != at_8                  # no salt: the seed alone, as before
