"""Each instance's engine step budget (chunk_tokens) as its profile reported it sets that instance's
prefill estimates (policy.base.chunk_tokens_of), in the live scheduler and the simulator alike.

By hand, helpers_sched.MODEL (step_ms = 2 + 0.01*p + 0.5*n), a 1,500-token prompt on an idle
instance: at 512 tokens a step, ceil(1500/512) = 3 steps, 3*2 + 15 = 21 ms; at 2048, one step,
2 + 15 = 17 ms. A first token due in 19 ms is out of reach at 512 and fits at 2048."""

from __future__ import annotations

from services.common.domain import ClusterSnapshot, Slo, Verdict
from services.common.pb.hfx.v1 import common_pb2
from services.scheduler import registry_sync
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.base import chunk_tokens_of
from services.scheduler.policy.hfx import Hfx
from services.scheduler.server import SchedulerServicer
from services.sim.profiles import get_profile
from services.sim.runner import simulate
from services.sim.workload import SimRequestSpec
from tests.unit.helpers_sched import make_instance, make_request

CONFIG = PolicyConfig(chunk_tokens=512)


def long_prompt(**overrides):
    return make_request(prompt_tokens=1500, max_tokens=4, slo=Slo(ttft_ms=19.0, tpot_ms=50.0), **overrides)


def test_an_instance_s_reported_step_budget_sets_its_prefill_estimate():
    hfx = make_policy("hfx", CONFIG)
    cluster_2048 = make_cluster(chunk_tokens=2048)
    (decision,) = hfx.schedule([long_prompt()], cluster_2048, now_s=0.0).decisions
    assert decision.verdict is Verdict.ADMIT and decision.instance_id == "i0"
    assert abs(decision.predicted_ttft_ms - 17.0) < 1e-6


def test_an_instance_that_reports_no_step_budget_is_estimated_at_the_policy_s():
    hfx = make_policy("hfx", CONFIG)
    (decision,) = hfx.schedule([long_prompt()], make_cluster(chunk_tokens=0), now_s=0.0).decisions
    assert decision.verdict is Verdict.BEST_EFFORT   # 21 ms of prefill against a 19-ms TTFT
    assert chunk_tokens_of(make_instance(), CONFIG) == 512
    assert chunk_tokens_of(make_instance(chunk_tokens=2048), CONFIG) == 2048


def test_the_scheduler_takes_each_worker_s_step_budget_from_its_stored_profile():
    servicer = SchedulerServicer(SchedulerConfig(policy_config=CONFIG), make_policy("hfx", CONFIG), None, CONFIG)
    servicer.state.set_instances([common_pb2.Instance(instance_id=iid, address=f"127.0.0.1:{k + 1}", max_model_len=2048)
                                  for k, iid in enumerate(("w0", "w1", "w2"))])
    registry_sync.take_step_budget(servicer, "w0", {"chunk_tokens": 2048})
    registry_sync.take_step_budget(servicer, "w1", {"chunk_tokens": "2048"})   # unreadable: the policy's
    registry_sync.take_step_budget(servicer, "w2", {})
    views = {v.instance_id: v for v in servicer.state.snapshot().instances}
    assert {iid: chunk_tokens_of(v, CONFIG) for iid, v in views.items()} == {"w0": 2048, "w1": 512, "w2": 512}


def test_the_simulator_s_instances_show_the_policy_their_own_step_budget():
    """A simulated instance steps its profile's chunk_tokens (gpu-7b: 2048) and the policy sees
    that budget, as the live scheduler does, whatever PolicyConfig.chunk_tokens says (512 here)."""
    profile = get_profile("gpu-7b")
    seen: list[int] = []

    class Watching(Hfx):
        def schedule(self, waiting, cluster, now_s):
            seen.extend(v.chunk_tokens for v in cluster.instances)
            return super().schedule(waiting, cluster, now_s)

    requests = [SimRequestSpec(long_prompt(request_id=f"r{k}", arrival_s=0.01 * k), 4) for k in range(3)]
    result = simulate(Watching(CONFIG), profile, requests, instances=2, seed=1)
    assert seen and set(seen) == {2048} and len(result.records) == 3


def make_cluster(chunk_tokens: int) -> ClusterSnapshot:
    return ClusterSnapshot(instances=(make_instance(chunk_tokens=chunk_tokens),))

