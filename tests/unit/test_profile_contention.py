"""Worker-start profiling's contention check."""

import pytest

from services.worker.contention import CpuSample, counts_nice, others_cores, pid_stat, system_busy_ticks, tree_ticks


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


def test_system_busy_ticks_can_leave_out_niced_work():
    text = "cpu  100 5 20 1000 50 1 2 3 7 0\n"
    assert system_busy_ticks(text, count_nice=False) == 100 + 20 + 1 + 2 + 3


def test_niced_work_counts_when_the_worker_is_niced_or_sessions_share_the_cpu_as_groups():
    assert not counts_nice(0, autogroups=False)   # nice 19 weighs 15 against the engine's 1024
    assert counts_nice(5, autogroups=False)       # a niced worker competes with niced work as an equal
    assert counts_nice(0, autogroups=True)        # groups share equally whatever their processes' nice


def test_profiling_on_a_machine_that_is_never_quiet_stops_waiting_after_one_budget(monkeypatch):
    """Every wait of every attempt comes out of one QUIET_WAIT_S: the worker then keeps its least
    contended profile and registers (it once waited 3 x 60 s and missed a 240 s readiness wait)."""
    import asyncio

    from services.worker import contention, profile

    waits: list[float] = []

    async def wait_quiet(max_wait_s: float = profile.QUIET_WAIT_S) -> float:
        waits.append(max_wait_s)
        return 2.0

    profiled: list[int] = []

    async def profile_engine(engine, vocab_size, grid):
        profiled.append(len(profiled) + 1)
        await asyncio.sleep(0.2)
        return f"fit {len(profiled)}", None

    # Other processes keep the machine busy: ~3 cores over the 1st profile (0.2 s), ~1.5 over the 2nd.
    samples = iter([CpuSample(0.0, 0.0), CpuSample(0.6, 0.0), CpuSample(10.0, 0.0), CpuSample(10.3, 0.0)])
    monkeypatch.setattr(contention, "cpu_sample", lambda root=None: next(samples))
    monkeypatch.setattr(profile, "wait_quiet", wait_quiet)
    monkeypatch.setattr(profile, "profile_engine", profile_engine)
    monkeypatch.setattr(profile, "QUIET_WAIT_S", 0.3)
    fit_, busy, attempts = asyncio.run(profile._quiet_profile(object(), 1000))
    assert attempts == 2 == len(profiled) < profile.PROFILE_ATTEMPTS   # the budget ran out after the 2nd
    assert waits[0] == pytest.approx(0.3, abs=0.05) and waits[1] < 0.05   # the 2nd wait had what was left
    assert fit_ == "fit 2" and busy == pytest.approx(1.5, rel=0.3)        # the least contended one
