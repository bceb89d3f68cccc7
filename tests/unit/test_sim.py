"""The simulated instance and the discrete-event simulator."""

from __future__ import annotations

import json

import pytest

from services.common.domain import LatencyModel
from services.scheduler.policy import make_policy, policy_names
from services.cli import main
from services.scheduler.policy.settings import policy_config
from services.sim.cli import DEFAULT_WORKLOAD
from services.sim.instance import SimInstance, SimSeq
from services.report.metrics import comparison, describe_comparison, report
from services.sim.profiles import get_profile
from services.sim.runner import simulate
from services.sim.workload import generate, load_workload

MODEL = LatencyModel(2.0, 0.01, 0.5, 0.0)


def test_instance_chunked_prefill_then_decode():
    """Chunk 100: a 250-token prompt takes 3 steps (100, 100, 50 tokens), the last emits token 1."""
    inst = SimInstance("i", MODEL, kv_capacity_tokens=1000, chunk_tokens=100, max_num_seqs=8)
    inst.add(SimSeq("a", 250, 3))
    steps = []
    while inst.has_work:
        steps.append(inst.begin_step())
        out = inst.end_step()
    assert steps == pytest.approx([3.0, 3.0, 2.5, 2.5, 2.5])   # 2+0.01*100; 2+0.01*50; decodes 2+0.5
    assert out.finished == ["a"] and inst.kv_used_tokens == 0


def test_instance_preempts_newest_when_kv_runs_out():
    inst = SimInstance("i", MODEL, kv_capacity_tokens=205, chunk_tokens=512, max_num_seqs=8)
    inst.add(SimSeq("a", 100, 50))
    inst.add(SimSeq("b", 100, 50))
    for _ in range(6):
        inst.begin_step()
        inst.end_step()
    assert inst.engine_preemptions >= 1 and inst.waiting[0].request_id == "b"
    assert inst.kv_used_tokens <= 205


def test_instance_removal_mid_step_drops_the_request_from_the_step_in_flight():
    """A policy preemption can land while a step is in flight: the removed request gets nothing
    from that step (it used to be finished there, and end_step failed removing it twice)."""
    inst = SimInstance("i", MODEL, kv_capacity_tokens=1000, chunk_tokens=100, max_num_seqs=8)
    inst.add(SimSeq("a", 10, 1))
    inst.add(SimSeq("b", 10, 1))
    inst.begin_step()
    assert inst.remove("a").request_id == "a"
    out = inst.end_step()
    assert out.finished == ["b"] and out.first_tokens == ["b"] and inst.kv_used_tokens == 0


def run(policy: str, seed: int = 3, rate: float = 15.0, n: int = 300):
    prof = get_profile("cpu-tiny")
    wl = load_workload(DEFAULT_WORKLOAD)
    reqs = generate(wl, rate, n, seed, prof.model, prof.chunk_tokens)
    cfg = policy_config(prof, wl.classes)
    return simulate(make_policy(policy, cfg), prof, reqs, 2, seed)


def test_same_seed_same_results():
    a, b = run("hfx"), run("hfx")
    key = lambda res: [(r.spec.request_id, r.verdict, r.first_token_s, r.finish_s) for r in res.records]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(run("hfx", seed=4))


@pytest.mark.parametrize("name", policy_names())
def test_every_policy_runs_every_request_to_an_end(name):
    res = run(name)
    assert all(r.finish_s is not None for r in res.records)
    rep = report(name, 15.0, res)
    assert 0.0 <= rep.slo_attainment <= 1.0 and rep.requests == 300
    assert rep.completed + rep.rejected + rep.failed == 300
    # Rejections and E2E are also reported per class (rejecting policies complete a different mix).
    assert sum(c["rejected"] for c in rep.per_class.values()) == rep.rejected
    assert all("mean" in c["e2e_ms"] for c in rep.per_class.values())


def test_fcfs_suffers_head_of_line_blocking_under_overload():
    fcfs, hfx = report("fcfs", 40.0, run("fcfs", rate=40.0)), report("hfx", 40.0, run("hfx", rate=40.0))
    assert hfx.slo_attainment > fcfs.slo_attainment


def test_bench_cli_json_and_bad_target_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--sim", "--policy", "fcfs", "hfx", "--rate", "5", "--requests", "50",
                 "--instances", "2", "--quiet", "--json", str(out), "--plot", str(tmp_path)]) == 0
    doc = json.loads(out.read_text())
    assert "simulated" in doc["engine"] and len(doc["records"]) == 2
    rec = doc["records"][0]
    for key in ("policy", "rate_rps", "requests", "slo_attainment", "per_class", "goodput_rps"):
        assert key in rec
    assert set(rec["ttft_ms"]) >= {"p50", "p90", "p99"} and set(rec["e2e_ms"]) >= {"p50", "p90", "p99"}
    assert (tmp_path / "attainment_vs_rate.png").exists()
    assert doc["comparison"]["policy"] == "hfx" and doc["comparison"]["baseline"] == "fcfs"
    assert doc["requests"] == 50
    printed = capsys.readouterr().out
    assert "engine: sim (simulated)" in printed and "hfx vs fcfs" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--target", "nonsense", "--quiet"])
    assert exit_info.value.code == 2
    assert "expected grpc://HOST:PORT" in capsys.readouterr().err


def _rec(policy, rate, attain, e2e_mean, goodput):
    return {"policy": policy, "rate_rps": rate, "slo_attainment": attain, "goodput_rps": goodput,
            "e2e_ms": {"mean": e2e_mean}}


def test_comparison_is_taken_at_the_first_rate_where_the_baseline_collapses():
    records = [_rec("fcfs", 10, 0.95, 500.0, 10), _rec("fcfs", 20, 0.30, 2000.0, 10), _rec("fcfs", 30, 0.20, 4000.0, 10),
               _rec("fcfs", 40, 0.05, 8000.0, 10), _rec("edf", 10, 0.96, 450.0, 10), _rec("edf", 20, 0.5, 900.0, 10),
               _rec("hfx", 10, 0.99, 400.0, 20), _rec("hfx", 20, 0.92, 700.0, 20), _rec("hfx", 30, 0.80, 1000.0, 20),
               _rec("hfx", 40, 0.70, 1200.0, 20)]
    c = comparison(records)
    # 30 req/s, not 40: the lowest rate at which fcfs is at or below 25%.
    assert c["rate_rps"] == 30 and c["attainment_ratio"] == pytest.approx(4.0)
    assert c["e2e_mean_lower"] == pytest.approx(0.75)
    assert c["goodput_ratio"] == pytest.approx(2.0) and c["best_other_goodput_rps"] == 10
    line = describe_comparison(c)
    assert "at 30 req/s" in line and "4.00x" in line and "75.0% lower" in line and "2.00x" in line


def test_comparison_says_when_the_baseline_never_collapses_or_a_goodput_is_undefined():
    records = [_rec("fcfs", 10, 0.6, 900.0, None), _rec("hfx", 10, 0.9, 600.0, 10)]
    c = comparison(records)
    assert c["rate_rps"] is None and c["goodput_ratio"] is None
    assert "more than 25% at every swept rate" in describe_comparison(c)
    assert comparison([_rec("hfx", 10, 0.9, 600.0, 10)]) is None  # no baseline in the sweep
    zero = comparison([_rec("fcfs", 10, 0.0, 900.0, None), _rec("hfx", 10, 0.5, 600.0, None)])
    assert zero["attainment_ratio"] is None and "(inf)" in describe_comparison(zero)


def test_the_view_reports_the_step_in_flight_as_a_worker_would():
    """The policy's snapshot carries when the step in flight began and its shape (not its
    duration: the policy predicts that with its model); between steps it says so."""
    from services.common.domain import ClusterSnapshot, RequestSpec, Slo
    from services.sim.runner import Simulation
    from services.sim.workload import SimRequestSpec

    seen = []

    class Spy:
        name = "spy"

        def __init__(self):
            self.inner = make_policy("fcfs", policy_config(get_profile("cpu-tiny")))

        def schedule(self, waiting, cluster: ClusterSnapshot, now_s):
            seen.append((now_s, cluster.instances[0].load))
            return self.inner.schedule(waiting, cluster, now_s)

    spec = lambda rid, t: RequestSpec(rid, 600, 4, Slo(1000.0, 100.0), arrival_s=t)  # noqa: E731
    Simulation(Spy(), get_profile("cpu-tiny"), 1, 1, tickets=False).run(
        [SimRequestSpec(spec("a", 0.0), 4), SimRequestSpec(spec("b", 0.001), 4)])
    (t0, first), (t1, second) = seen[0], seen[1]
    assert first.reports_step and first.step_in_flight is None and first.reported_s == t0 == 0.0
    # "b" arrives 1 ms into the first step: the first chunk of "a"'s 600-token prompt.
    step = second.step_in_flight
    assert t1 == 0.001 and step is not None and step.started_s == 0.0
    assert (step.prefill_tokens, step.decode_seqs) == (get_profile("cpu-tiny").chunk_tokens, 0)
