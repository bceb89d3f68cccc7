"""Role changes in the simulator (SIMULATED engine): a flip mid-run loses no request (legs placed
before it finish as what they were), later requests use the instance in its new role, and the
role policy drives flips through the same hooks."""

from __future__ import annotations

from services.common.domain import Role
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.roles import RoleConfig, RolePolicy
from services.sim.phases import Phase, phased
from services.sim.profiles import load_profile
from services.sim.roles import RoleDriver
from services.sim.runner import Simulation, pd_roles
from services.sim.workload import load_workload

PROFILE = load_profile("cpu-tiny")
WORKLOAD = load_workload("services/sim/workloads/pd.yaml")
CONFIG = PolicyConfig(default_latency_model=PROFILE.model, chunk_tokens=PROFILE.chunk_tokens,
                      default_kv_capacity_tokens=PROFILE.kv_capacity_tokens)


def _requests(rate: float, seconds: float):
    return [r for _, r in phased(WORKLOAD, [Phase("mix", seconds, rate, {"chat": 0.7, "longdoc": 0.3})], 1,
                                 PROFILE.model, PROFILE.chunk_tokens)]


class Scripted:
    """Flips given instances at given times (the driver hooks Simulation calls)."""

    def __init__(self, flips):
        self.flips = flips

    def begin(self, sim):
        for t, iid, role in self.flips:
            sim._push(t, "scale", (iid, role))

    def on_event(self, sim, payload):
        sim.set_role(*payload)

    def on_finish(self, rec, now_s):
        pass

    def instance_seconds(self, end_s):
        return 0.0


def test_a_flip_mid_run_loses_nothing_and_later_requests_use_the_new_role():
    reqs = _requests(20.0, 6.0)
    sim = Simulation(make_policy("hfx", CONFIG), PROFILE, 4, 1, roles=pd_roles("2:2", 4),
                     scaling=Scripted([(2.0, "sim-00", Role.DECODE), (2.0, "sim-03", Role.PREFILL)]))
    result = sim.run(reqs)
    served = [r for r in result.records if r.verdict in ("admit", "best_effort")]
    assert served and all(r.generated == r.output_tokens and r.finish_s is not None for r in served)
    later = [r.instance_id for r in result.records if r.placed_s and r.placed_s > 2.1]
    assert any(i.startswith("sim-03->") for i in later)          # sim-03 prefills now
    assert any(i.endswith("->sim-00") for i in later)            # sim-00 decodes now
    assert not any(i.startswith("sim-00->") or i.endswith("->sim-03") for i in later)


def test_the_role_policy_runs_in_the_simulator_with_its_reasons():
    reqs = [r for _, r in phased(WORKLOAD, [Phase("decode-heavy", 20.0, 40.0, {"chat": 0.95, "longdoc": 0.05})], 1,
                                 PROFILE.model, PROFILE.chunk_tokens)]
    driver = RoleDriver(RolePolicy(RoleConfig(), CONFIG), change_s=0.5)
    result = Simulation(make_policy("hfx", CONFIG), PROFILE, 16, 1, roles=pd_roles("8:8", 16), scaling=driver).run(reqs)
    assert all(r.finish_s is not None for r in result.records)
    assert driver.changes and all(c.decision.to_role is Role.DECODE for c in driver.changes)
    assert all("decode pressed" in c.decision.reason for c in driver.changes)
    assert driver.timeline[-1][1:] == (8 - len(driver.changes), 8 + len(driver.changes))
