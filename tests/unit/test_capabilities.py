"""Optional capabilities are declared protocols: who has which is checked here, so a rename on
either side fails a test instead of silently turning a feature off (as a getattr probe would)."""

from services.scheduler.policy import KeepsBudgets, LearnsFromCompletions, make_policy, policy_names
from services.worker.engine.base import DeclaresProfile, Engine, HasStepBudget, TimesItsSteps
from services.worker.engine.sim_engine import SimEngine, SimEngineConfig
from services.worker.engine.vllm_engine import VllmEngine, VllmEngineConfig


def test_policy_capabilities():
    hfx = make_policy("hfx")
    assert isinstance(hfx, LearnsFromCompletions) and isinstance(hfx, KeepsBudgets)
    for name in set(policy_names()) - {"hfx"}:
        assert not isinstance(make_policy(name), KeepsBudgets), name


def test_engine_capabilities():
    vllm = VllmEngine(VllmEngineConfig(model="/nonexistent"))  # not started: nothing is loaded
    assert isinstance(vllm, Engine) and isinstance(vllm, TimesItsSteps) and isinstance(vllm, HasStepBudget)
    assert not isinstance(vllm, DeclaresProfile)
    sim = SimEngine(SimEngineConfig(model="/nonexistent"))
    assert isinstance(sim, Engine) and isinstance(sim, DeclaresProfile)
    assert not isinstance(sim, TimesItsSteps)
