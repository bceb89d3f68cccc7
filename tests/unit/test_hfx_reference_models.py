"""The policy's reference models (the fastest decode step, the prefill models of "unloaded") are
taken again only when an instance's latency model, step budget or role changed (issue 9,
thirteenth session: taking them on every pass was ~5% of the policy's time in the simulator)."""

from __future__ import annotations

from dataclasses import replace

from services.common.domain import ClusterSnapshot, LatencyModel
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy import hfx as hfx_module
from tests.unit.helpers_sched import make_instance, make_request

FAST = LatencyModel(1.0, 0.005, 0.25, 0.0)


def test_reference_models_are_taken_again_only_when_an_instance_model_changes(monkeypatch):
    calls = []
    real = hfx_module.prefill_models
    monkeypatch.setattr(hfx_module, "prefill_models", lambda *a: calls.append(1) or real(*a))
    policy = make_policy("hfx", PolicyConfig())
    a, b = make_instance("w0"), make_instance("w1")
    for t in (1.0, 1.1, 1.2):   # new snapshots of the same instances
        policy.schedule([], ClusterSnapshot((replace(a), replace(b))), t)
    assert len(calls) == 1
    policy.schedule([], ClusterSnapshot((a, replace(b, latency_model=FAST))), 1.3)
    assert len(calls) == 2 and policy._ref_model == FAST
    policy.schedule([], ClusterSnapshot((a, replace(b, latency_model=FAST, chunk_tokens=64))), 1.4)
    assert len(calls) == 3 and policy._ref_chunk == 64


def test_a_request_is_judged_by_the_model_of_the_pass_it_arrives_in():
    policy = make_policy("hfx", PolicyConfig())
    a = make_instance("w0")
    policy.schedule([], ClusterSnapshot((a,)), 1.0)
    fast = replace(a, latency_model=FAST)
    spec = make_request(request_id="r", arrival_s=1.1)
    policy.schedule([spec], ClusterSnapshot((fast,)), 1.1)
    entry = policy.queue.known.get("r")
    placed = entry is None   # placed at once, or its unloaded prefill is the fast model's
    assert placed or entry.unloaded_prefill_ms == hfx_module.prefill_ms(FAST, spec.prompt_tokens, policy._ref_chunk)
