"""Worker-start profiling's contention check and vLLM's engine-timed step durations."""

from types import SimpleNamespace

import pytest

from services.worker.contention import CpuSample, others_cores, pid_stat, system_busy_ticks, tree_ticks
from services.worker.engine.vllm_engine import _StatsSink, engine_step_ms


def test_system_busy_ticks_leaves_out_idle_and_iowait():
    text = "cpu  100 5 20 1000 50 1 2 3 7 0\ncpu0 50 2 10 500 25 0 1 1 0 0\n"
    assert system_busy_ticks(text) == 100 + 5 + 20 + 1 + 2 + 3


def test_system_busy_ticks_needs_the_aggregate_line():
    with pytest.raises(ValueError):
        system_busy_ticks("cpu0 1 2 3 4\n")


def test_pid_stat_reads_ppid_and_cpu_ticks_even_with_spaces_in_comm():
    fields = ["S", "42"] + ["0"] * 9 + ["300", "45"] + ["0"] * 10
    assert pid_stat("1234 (VLLM Engine) Core) " + " ".join(fields)) == (42, 345)


def test_tree_ticks_sums_a_process_and_its_descendants_only():
    stats = {10: (1, 100), 11: (10, 50), 12: (11, 25), 20: (1, 999)}
    assert tree_ticks(stats, 10) == 175
    assert tree_ticks(stats, 20) == 999


def test_others_cores_subtracts_own_tree():
    before, after = CpuSample(100.0, 10.0), CpuSample(103.0, 11.5)
    assert others_cores(before, after, 2.0) == pytest.approx(0.75)
    assert others_cores(before, CpuSample(101.0, 12.0), 2.0) == 0.0  # clock skew never goes negative
    assert others_cores(before, after, 0.0) == 0.0


def test_engine_step_ms_is_the_smallest_inter_token_gap():
    assert engine_step_ms(SimpleNamespace(inter_token_latencies_iter=[0.0031, 0.0021, 0.0])) == pytest.approx(2.1)
    assert engine_step_ms(SimpleNamespace(inter_token_latencies_iter=[])) is None
    assert engine_step_ms(SimpleNamespace()) is None


def _iteration(itls, prompt=0, first=0, generated=0):
    return SimpleNamespace(inter_token_latencies_iter=itls, prompt_token_stats=SimpleNamespace(computed=prompt),
                           time_to_first_tokens_iter=[0.0] * first, num_generation_tokens=generated)


def test_sink_times_decode_steps_on_the_engine_clock_and_prefill_only_steps_by_gap():
    sink = _StatsSink()
    sink.record(None, _iteration([], prompt=64, first=1, generated=1), now_s=10.0)  # from idle: skipped
    assert sink.steps_total == 0
    sink.record(SimpleNamespace(num_running_reqs=1, num_waiting_reqs=0, kv_cache_usage=0.0), None, now_s=10.0)
    sink.record(None, _iteration([0.002], generated=1), now_s=10.050)  # frontend gap 50 ms, engine 2 ms
    sink.record(None, _iteration([], prompt=32, first=1, generated=1), now_s=10.060)
    assert [s.step_ms for s in sink.steps] == [pytest.approx(2.0), pytest.approx(10.0)]
    assert (sink.steps[1].prefill_tokens, sink.steps[1].decode_seqs) == (32, 0)
