"""Small real objects for policy and simulator tests (no mocks)."""

from __future__ import annotations

from dataclasses import replace

from services.common.domain import InstanceLoad, InstanceView, LatencyModel, RequestSpec, RunningRequest, Slo

# Round numbers so budgets can be worked by hand: step_ms = 2 + 0.01*p + 0.5*n + 0*kv.
MODEL = LatencyModel(2.0, 0.01, 0.5, 0.0)


def make_request(**overrides) -> RequestSpec:
    base = RequestSpec(request_id="r1", prompt_tokens=100, max_tokens=10, slo=Slo(ttft_ms=100.0, tpot_ms=10.0),
                       priority=1, task_class="chat", arrival_s=0.0)
    return replace(base, **overrides)


def make_instance(instance_id: str = "i0", running: tuple[RequestSpec, ...] = (), placed_s: float = 0.0,
                  kv_capacity_tokens: int = 10_000, **overrides) -> InstanceView:
    base = InstanceView(instance_id, f"sim://{instance_id}",
                        load=InstanceLoad(kv_capacity_tokens=kv_capacity_tokens),
                        running=tuple(RunningRequest(s, placed_s) for s in running), latency_model=MODEL)
    return replace(base, **overrides)
