"""P/D in the simulator (engine sim, SIMULATED): the split request's timeline, and a small
P/D cluster run end to end with the HFX policy and the P/D baselines."""

from __future__ import annotations

import pytest

from services.common.domain import Decision, LatencyModel, Leg, Preemption, Role, ScheduleResult, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.sim.cli import DEFAULT_WORKLOAD
from services.report.metrics import ttft_ms
from services.sim.profiles import Profile
from services.sim.runner import simulate
from services.sim.workload import SimRequestSpec, generate, load_workload
from tests.unit.helpers_sched import make_request

MODEL = LatencyModel(2.0, 0.01, 0.5, 0.0, 0.002)
PROFILE = Profile("pd-test", MODEL, kv_capacity_tokens=20_000, chunk_tokens=100, max_num_seqs=64, step_noise=0.0,
                  note="test")
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10)
PD_ROLES = (Role.PREFILL, Role.DECODE)


def test_split_request_timeline_matches_the_policy_prediction():
    """L=1000, 10 output tokens on idle P and D. P: 10 chunks of 100 at 2 + 0.01*100 = 3 ms = 30 ms
    (no token to the client); KV transfer 0.002*1000 = 2 ms; D recomputes the last prompt token:
    2 + 0.01 = 2.01 ms -> first token at 34.01 ms (the policy predicted 34.01 ms as well). Then
    9 decode steps of 2 + 0.5 = 2.5 ms."""
    req = SimRequestSpec(make_request(request_id="x", prompt_tokens=1000, max_tokens=10, slo=Slo(1000.0, 10.0)), 10)
    result = simulate(make_policy("hfx", CFG), PROFILE, [req], instances=2, seed=1, roles=PD_ROLES)
    (rec,) = result.records
    assert rec.instance_id == "sim-00->sim-01" and "P/D" in rec.reason
    assert ttft_ms(rec) == pytest.approx(34.01)
    assert (rec.finish_s - rec.first_token_s) * 1000 == pytest.approx(9 * 2.5)
    assert rec.generated == 10


def test_roles_must_match_the_instance_count():
    with pytest.raises(ValueError, match="3 roles for 2 instances"):
        simulate(make_policy("hfx", CFG), PROFILE, [], instances=2, seed=1, roles=(Role.PREFILL,) * 3)


@pytest.mark.parametrize("policy", ["hfx", "fcfs", "least-load"])
def test_small_pd_cluster_serves_the_default_workload(policy):
    """2 P + 2 D, 150 requests: every request ends (served or refused with a reason), every
    served one produced all its tokens, and the baselines split every request."""
    workload = load_workload(DEFAULT_WORKLOAD)
    requests = generate(workload, 6.0, 150, 3, MODEL, 100)
    roles = (Role.PREFILL, Role.PREFILL, Role.DECODE, Role.DECODE)
    result = simulate(make_policy(policy, CFG), PROFILE, requests, instances=4, seed=3, roles=roles)
    assert len(result.records) == 150 and all(r.finish_s is not None for r in result.records)
    served = [r for r in result.records if r.verdict in ("admit", "best_effort")]
    assert served and all(r.generated == r.output_tokens for r in served)
    split = [r for r in served if "->" in r.instance_id]
    if policy == "hfx":
        assert split and all(r.instance_id.split("->")[0] in ("sim-00", "sim-01") for r in split)
    else:
        assert len(split) == len(served)


class Scripted:
    """A policy that splits the request, preempts its decode leg while P still prefills it, then
    places it whole on D: the sequence a real policy produces under pressure, made certain."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls = 0

    def schedule(self, waiting, cluster, now_s):
        self.calls += 1
        specs = list(waiting)
        if self.calls == 1:
            return ScheduleResult(decisions=(Decision(specs[0].request_id, Verdict.ADMIT, "split", "sim-00",
                                                      legs=(Leg(Role.PREFILL, "sim-00"), Leg(Role.DECODE, "sim-01"))),))
        if self.calls == 2:
            return ScheduleResult(preemptions=(Preemption("sim-01", "x", "scripted"),))
        return ScheduleResult(decisions=tuple(Decision(s.request_id, Verdict.ADMIT, "whole", "sim-01") for s in specs))


def test_decode_leg_preempted_while_p_still_prefills_is_placed_again():
    req = SimRequestSpec(make_request(request_id="x", prompt_tokens=1000, max_tokens=10, slo=Slo(1000.0, 10.0)), 10)
    result = simulate(Scripted(), PROFILE, [req], instances=2, seed=1, roles=PD_ROLES)
    (rec,) = result.records
    assert rec.preemptions == 1 and rec.instance_id == "sim-01" and rec.generated == 10
    assert result.policy_preemptions == 1
