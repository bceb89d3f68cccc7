"""vLLM's engine steps as the step model's samples (services/worker/engine/vllm_steps.py): what a
step held from the engine core's own account of it, how long it took from the engine core's clock,
and what that does to online calibration (issue 10, tenth session)."""

from types import SimpleNamespace

import pytest

from services.common.domain import LatencyModel
from services.scheduler.latency import OnlineLatencyModel
from services.worker.engine.vllm_steps import StepSink, engine_step_ms

# Roughly D's start-up profile of the ninth session's run 4.
PROFILE = LatencyModel(3.87, 0.0227, 0.0531, 0.000246)


def _details(ctx_tokens=0, decodes=0, elapsed_ms=0.0):
    return SimpleNamespace(num_ctx_requests=int(ctx_tokens > 0), num_ctx_tokens=ctx_tokens,
                           num_generation_requests=decodes, num_generation_tokens=decodes,
                           elapsed_ms=elapsed_ms, is_dummy=False)


def _scheduler(details, running=1, kv_usage=0.0):
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=0, kv_cache_usage=kv_usage,
                           iteration_details=details)


def _outputs(itls_s=(), completed_prompt=0, first=0, generated=0, external=0):
    """A step's IterationStats as vLLM fills it from the step's outputs: prompt tokens only where a
    prefill completed, first tokens, generated tokens, inter-token gaps of decoding requests."""
    return SimpleNamespace(inter_token_latencies_iter=list(itls_s), num_generation_tokens=generated,
                           time_to_first_tokens_iter=[0.1] * first,
                           prompt_token_stats=SimpleNamespace(computed=completed_prompt, external_kv_transfer=external))


def test_engine_step_ms_is_the_smallest_inter_token_gap():
    assert engine_step_ms(SimpleNamespace(inter_token_latencies_iter=[0.0031, 0.0021, 0.0])) == pytest.approx(2.1)
    assert engine_step_ms(SimpleNamespace(inter_token_latencies_iter=[])) is None
    assert engine_step_ms(SimpleNamespace()) is None


def test_a_chunked_prompt_is_credited_to_the_steps_that_ran_its_chunks():
    """A 1,800-token prompt beside 4 decodes with a 1,024-token step budget runs in two chunks. vLLM
    counts its prompt tokens in the outputs of the last chunk's step only; the first chunk's step
    (4 decodes and 1,020 prompt tokens) then looked like a step of 4 decodes taking 30 ms."""
    sink = StepSink()
    sink.record(_scheduler(_details(1020, 4, 29.0)), _outputs([0.030] * 4, generated=4))
    sink.record(_scheduler(_details(780, 4, 22.0)), _outputs([0.023] * 4, completed_prompt=1800, first=1, generated=5))
    assert [(s.prefill_tokens, s.decode_seqs) for s in sink.steps] == [(1020, 4), (780, 4)]
    assert [s.step_ms for s in sink.steps] == [pytest.approx(30.0), pytest.approx(23.0)]
    assert sink.steps_total == 2


def test_a_step_without_decodes_is_timed_by_the_engine_not_by_the_gap_between_reports():
    """A prefill leg on P: no request decodes, so no inter-token gap. Its time is the step's
    execution plus what the engine spends between steps (learned from decode steps), never the
    frontend's gap since the previous report (idle time included), and a chunk's step that has no
    output at all still counts."""
    sink = StepSink()
    for _ in range(100):  # decode steps: 4 ms between outputs, 3 ms of it executing
        sink.record(_scheduler(_details(0, 2, 3.0)), _outputs([0.004, 0.004], generated=2))
    assert sink.between_steps_ms == pytest.approx(1.0, rel=0.01)
    sink.record(_scheduler(_details(2048, 0, 45.0), running=0), None)  # first chunk: no output
    sink.record(_scheduler(_details(300, 0, 8.0), running=0), _outputs(completed_prompt=2348, first=1, generated=1))
    assert [(s.prefill_tokens, s.decode_seqs) for s in list(sink.steps)[-2:]] == [(2048, 0), (300, 0)]
    assert [s.step_ms for s in list(sink.steps)[-2:]] == [pytest.approx(46.0, rel=0.01), pytest.approx(9.0, rel=0.02)]


def test_a_report_without_the_engine_cores_account_of_its_step_is_no_sample():
    sink = StepSink()
    sink.record(SimpleNamespace(num_running_reqs=1, num_waiting_reqs=0, kv_cache_usage=0.5), _outputs([0.002], generated=1))
    sink.record(_scheduler(SimpleNamespace(**{**vars(_details(0, 0, 0.0)), "is_dummy": True})), None)
    assert sink.steps_total == 0 and not sink.steps
    assert sink.kv_usage == 0.0 and sink.running_requests == 1


def test_a_p_d_legs_first_step_on_d_is_a_step_with_one_prompt_token():
    # Its prompt's KV came from P; the one recomputed token is the step's prefill.
    sink = StepSink()
    sink.record(_scheduler(_details(1, 2, 3.0)), _outputs([0.004, 0.004], completed_prompt=1, first=1, generated=3,
                                                          external=1500))
    assert [(s.prefill_tokens, s.decode_seqs, s.step_ms) for s in sink.steps] == [(1, 2, pytest.approx(4.0))]
    assert sink.steps_total == 1   # recent_steps end at this count: readers take the last new ones


def test_kv_tokens_are_the_usage_reported_before_the_step():
    sink = StepSink()
    sink.kv_capacity_tokens = 10_000
    sink.record(_scheduler(_details(0, 1, 3.0), kv_usage=0.25), _outputs([0.004], generated=1), 10_000)
    sink.record(_scheduler(_details(0, 1, 3.0), kv_usage=0.5), _outputs([0.004], generated=1), 10_000)
    assert [s.kv_tokens for s in sink.steps] == [0, 2500]


def test_chunked_prefills_on_d_leave_its_decode_step_where_the_engine_runs_it():
    """D runs decodes as profiled, and now and then a prompt of 1,500 tokens that the step budget
    splits in two beside 4 decodes. The calibrated decode step (what decides whether a chat TPOT
    of 5.4 ms can be met) stays at the profile's; read from the outputs, the chunk's step was a
    decode step of 8x (the clip) and moved it up by tens of percent (c0 3.9 -> 5+ ms)."""
    sink, online, seen = StepSink(), OnlineLatencyModel(PROFILE), 0
    decode_ms = PROFILE.step_ms(0, 4, 0)
    chunk_ms, last_ms = PROFILE.step_ms(1020, 4, 0), PROFILE.step_ms(480, 4, 0)
    for _ in range(30):
        for _ in range(5):
            sink.record(_scheduler(_details(0, 4, decode_ms - 1.0)), _outputs([decode_ms / 1000] * 4, generated=4))
        sink.record(_scheduler(_details(1020, 4, chunk_ms - 1.0)), _outputs([chunk_ms / 1000] * 4, generated=4))
        sink.record(_scheduler(_details(480, 4, last_ms - 1.0)),
                    _outputs([last_ms / 1000] * 4, completed_prompt=1500, first=1, generated=5))
        for s in list(sink.steps)[len(sink.steps) - (sink.steps_total - seen):]:
            online.observe(s.prefill_tokens, s.decode_seqs, s.kv_tokens, s.step_ms)
        seen = sink.steps_total
    assert online.scale == pytest.approx(1.0, rel=0.01)
    assert online.prefill_scale == pytest.approx(1.0, rel=0.01)
    assert online.model.step_ms(0, 1, 0) < 5.4 * 0.8


def test_a_prompt_of_a_few_tokens_beside_decodes_calibrates_the_decode_part():
    """A step with one prompt token (or ten) beside a batch of decodes: its prefill term is a few
    hundredths of a millisecond, so (step - decode part) / prefill term is noise times a hundred
    and sent kp to its clip. Such a step tells how fast the decodes ran."""
    online = OnlineLatencyModel(PROFILE)
    for i in range(200):
        jitter = 1.1 if i % 2 else 0.9
        online.observe(1, 6, 4000, 1.3 * PROFILE.step_ms(0, 6, 4000) * jitter)
    assert online.prefill_scale == 1.0
    assert online.scale == pytest.approx(1.3 * 0.995, rel=0.02)
