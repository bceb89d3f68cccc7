"""A workload whose mix shifts (issue 11's benchmark): phases of the same task classes with other
weights, back to back, each at its own rate. SIMULATED arrivals, the generator's own."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from services.common.domain import LatencyModel
from services.sim.workload import SimRequestSpec, Workload, _gaps_s, at_times


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    rate_rps: float
    weights: dict[str, float]     # class name -> weight in this phase


def phased(workload: Workload, phases: list[Phase], seed: int, model: LatencyModel,
           chunk_tokens: int) -> list[tuple[str, SimRequestSpec]]:
    """(phase name, request) in arrival order; request ids are unique over the phases, and every
    class keeps the SLO it has in `workload` (its SLO does not depend on the phase)."""
    rng = random.Random(seed)
    slos = {c.name: c.slo(model, chunk_tokens) for c in workload.classes}
    out: list[tuple[str, SimRequestSpec]] = []
    start_s = 0.0
    for ph in phases:
        classes = tuple(replace(c, weight=ph.weights.get(c.name, 0.0)) for c in workload.classes)
        mix = replace(workload, classes=tuple(c for c in classes if c.weight > 0))
        t, shapes = start_s, []
        for gap in _gaps_s(mix, ph.rate_rps, max(1, int(ph.rate_rps * ph.duration_s * 3)), rng):
            t += gap
            if t >= start_s + ph.duration_s:
                break
            shapes.append((t, -1, -1))
        for r in at_times(mix, shapes, rng, model, chunk_tokens):
            spec = replace(r.spec, request_id=f"r{len(out):06d}", slo=slos[r.spec.task_class])
            out.append((ph.name, SimRequestSpec(spec, r.output_tokens)))
        start_s += ph.duration_s
    return out
