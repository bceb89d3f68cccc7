"""The simulated engine behind the Engine seam, on a virtual clock: determinism, timing by the
model (asserted in simulated time, never machine speed), KV capacity, abort; profiling it
recovers the model it simulates; the scheduler's per-instance models from profiles and steps."""

from __future__ import annotations

import asyncio
import time
import json

import pytest

from services.common.domain import FinishReason, InstanceLoad, LatencyModel, Sampling, StepSample
from services.common.model import ensure_default_model
from services.scheduler.models import InstanceModels
from services.sim.profiles import Profile, load_profile, profile_to_dict
from services.worker.engine import ENGINES, make_engine
from services.worker.engine.base import EngineRequest
from services.worker.engine.sim_engine import SimEngine, SimEngineConfig, VirtualClock
from services.worker.profile import FULL, profile_engine

MODEL = LatencyModel(4.0, 0.03, 0.2, 0.001)


def write_profile(tmp_path, kv_capacity_tokens: int = 65_536, noise: float = 0.0, chunk_tokens: int = 512) -> str:
    path = tmp_path / "profile.json"
    prof = Profile("test", MODEL, kv_capacity_tokens, chunk_tokens, 64, noise, "test profile")
    path.write_text(json.dumps(profile_to_dict(prof)))
    return str(path)


def make_engine_on(profile: str, seed: int = 0) -> tuple[SimEngine, VirtualClock]:
    clock = VirtualClock()
    return SimEngine(SimEngineConfig(str(ensure_default_model()), profile, seed=seed), clock), clock


def request(rid: str, prompt: list[int], max_tokens: int = 8) -> EngineRequest:
    return EngineRequest(rid, prompt, Sampling(max_tokens=max_tokens))


async def collect(engine: SimEngine, clock: VirtualClock, req: EngineRequest) -> tuple[list[int], list[float], FinishReason]:
    ids, times, finish = [], [], None
    async for out in engine.generate(req):
        ids += out.new_token_ids
        times += [clock.now_s()] * len(out.new_token_ids)
        finish = out.finish_reason
    return ids, times, finish


def run(coro):
    return asyncio.run(coro)


def test_registered_as_sim_and_labelled_in_the_log(tmp_path, caplog):
    assert "sim" in ENGINES

    async def main():
        engine = make_engine("sim", SimEngineConfig(str(ensure_default_model()), write_profile(tmp_path)))
        await engine.start()
        await engine.shutdown()
        return engine

    with caplog.at_level("WARNING"):
        engine = run(main())
    assert engine.max_model_len == 2048  # the tiny model's config.json
    assert "SIMULATED ENGINE" in caplog.text


def test_same_seed_and_prompt_give_the_same_tokens(tmp_path):
    profile = write_profile(tmp_path)

    async def tokens(seed: int, prompt: list[int]) -> list[int]:
        engine, clock = make_engine_on(profile, seed)
        await engine.start()
        ids, _, finish = await collect(engine, clock, request("a", prompt, 12))
        await engine.shutdown()
        assert finish is FinishReason.LENGTH
        return ids

    a = run(tokens(0, [5, 6, 7]))
    assert a == run(tokens(0, [5, 6, 7])) and len(a) == 12
    assert a != run(tokens(0, [5, 6, 8])) and a != run(tokens(1, [5, 6, 7]))
    assert all(0 <= t < 2048 and t != 2 for t in a)  # within the vocabulary, never EOS


def test_timing_follows_the_model_in_simulated_time(tmp_path):
    engine, clock = make_engine_on(write_profile(tmp_path))

    async def main():
        await engine.start()
        return await collect(engine, clock, request("a", list(range(10, 110)), 5))

    _, times, _ = run(main())
    # One 100-token prefill step (KV 100), then decode steps with 1 sequence and growing KV.
    assert times[0] == pytest.approx(MODEL.step_ms(100, 0, 100) / 1000, rel=1e-9)
    gaps_ms = [(b - a) * 1000 for a, b in zip(times, times[1:])]
    assert gaps_ms == pytest.approx([MODEL.step_ms(0, 1, 101 + i) for i in range(4)], rel=1e-9)
    stats = engine.stats()
    assert stats.steps_total == 5 and stats.recent_steps[0] == StepSample(100, 0, 100, pytest.approx(times[0] * 1000))


def test_chunked_prefill_takes_several_steps(tmp_path):
    engine, clock = make_engine_on(write_profile(tmp_path, chunk_tokens=64))

    async def main():
        await engine.start()
        return await collect(engine, clock, request("a", list(range(10, 210)), 1))

    _, times, _ = run(main())
    # 200 tokens in 64-token chunks: 4 steps, the KV of the whole prompt reserved from the first.
    expected_ms = sum(MODEL.step_ms(p, 0, 200) for p in (64, 64, 64, 8))
    assert times[0] * 1000 == pytest.approx(expected_ms)


def test_kv_capacity_holds_back_a_request_until_room_frees(tmp_path):
    engine, clock = make_engine_on(write_profile(tmp_path, kv_capacity_tokens=1000))

    async def main():
        await engine.start()
        first = asyncio.create_task(collect(engine, clock, request("a", [7] * 600, 20)))
        await asyncio.sleep(0)
        second = asyncio.create_task(collect(engine, clock, request("b", [8] * 600, 20)))
        for _ in range(5):
            await asyncio.sleep(0)
        mid = engine.stats()
        a, b = await first, await second
        return mid, a, b

    mid, (_, a_times, _), (_, b_times, _) = run(main())
    assert mid.running_requests == 1 and mid.waiting_requests == 1 and mid.kv_usage <= 1.0
    assert b_times[0] > a_times[-1]  # b's prompt fits only after a finished and freed its KV


def test_abort_ends_the_stream_and_frees_the_engine(tmp_path):
    engine, clock = make_engine_on(write_profile(tmp_path))

    async def main():
        await engine.start()
        outs = []
        async for out in engine.generate(request("a", [9] * 50, 1000)):
            outs.append(out)
            if len(outs) == 3:
                assert await engine.abort("a")
        for _ in range(5):
            await asyncio.sleep(0)
        return outs, engine.stats(), await engine.abort("a")

    outs, stats, again = run(main())
    assert outs[-1].finished and outs[-1].finish_reason is FinishReason.ABORT
    assert stats.running_requests == 0 and stats.waiting_requests == 0 and stats.kv_usage == 0.0
    assert again is False


def test_profile_of_the_sim_engine_recovers_its_model(tmp_path):
    engine, clock = make_engine_on(write_profile(tmp_path))

    async def main():
        await engine.start()
        return await profile_engine(engine, engine.vocab_size, FULL, clock.now_s)

    result, samples = run(main())
    got = result.model
    assert result.r2 > 0.99 and result.mape < 0.02 and len(samples) > 50
    assert got.c0_ms == pytest.approx(MODEL.c0_ms, rel=0.1)
    assert got.c1_ms_per_prefill_token == pytest.approx(MODEL.c1_ms_per_prefill_token, rel=0.1)
    assert got.c2_ms_per_decode_seq == pytest.approx(MODEL.c2_ms_per_decode_seq, rel=0.15)
    assert got.c3_ms_per_kv_token == pytest.approx(MODEL.c3_ms_per_kv_token, rel=0.15)


def test_profile_file_round_trips_and_bad_names_say_what_is_known(tmp_path):
    assert load_profile(write_profile(tmp_path)).model == MODEL
    with pytest.raises(ValueError, match="cpu-tiny"):
        load_profile("no-such-profile")


def test_scheduler_models_start_from_the_profile_and_refine_from_new_steps_only():
    models = InstanceModels()
    start = models.set_profile("w0", profile_to_dict(Profile("p", MODEL, 1000, 512, 8, 0.0, "")))
    assert start == MODEL
    slower = LatencyModel(8.0, 0.06, 0.4, 0.002)  # the instance turns out twice as slow
    total = 0
    for i in range(200):
        steps = tuple(StepSample(p, n, kv, slower.step_ms(p, n, kv))
                      for p, n, kv in ((0, 1 + i % 8, 500 + 10 * i), (256, i % 4, 800 + 10 * i)))
        total += len(steps)
        model = models.observe("w0", InstanceLoad(recent_steps=steps, steps_total=total))
    assert model.step_ms(0, 4, 1000) == pytest.approx(slower.step_ms(0, 4, 1000), rel=0.1)
    assert models.online["w0"].steps == total
    models.observe("w0", InstanceLoad(recent_steps=steps, steps_total=total))  # the same report again
    assert models.online["w0"].steps == total
    models.forget(set())
    assert not models.has("w0") and models.observe("w0", InstanceLoad()) is None


def test_stats_say_which_step_runs_and_when_it_began(tmp_path):
    """Load reports carry the step in flight (InstanceLoad.step_in_flight) so the scheduler's
    fit test can wait for what is left of it: its shape, and its start on the time.time() clock
    (the step loop runs on the engine's own clock); between steps, none."""
    engine, clock = make_engine_on(write_profile(tmp_path))

    async def main():
        await engine.start()
        task = asyncio.create_task(collect(engine, clock, request("a", [7] * 600, 3)))
        for _ in range(5):
            await asyncio.sleep(0)
        mid = engine.stats()
        await task
        return mid, engine.stats()

    before = time.time()
    mid, after = run(main())
    assert mid.reports_step and mid.step_in_flight is not None
    assert (mid.step_in_flight.prefill_tokens, mid.step_in_flight.decode_seqs, mid.step_in_flight.kv_tokens) == (512, 0, 600)
    assert before <= mid.step_in_flight.started_s <= time.time()
    assert after.reports_step and after.step_in_flight is None
