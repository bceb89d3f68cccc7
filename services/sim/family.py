"""A seeded family of random multi-class workloads, and the rate grid each is measured over.

`workload_doc(seed)` is a pure function: the same seed gives the same workload document, in the
YAML format services/sim/workload.py loads (so a worst case can be written out and replayed with
`hfx bench --sim --workload FILE`). A workload has 2-6 classes with prompt means from 32 to 4096
tokens, output means from 4 to 512, TTFT SLO scales 1.5-60x and TPOT scales 1.2-12x the unloaded
latency, priorities 0-3, on_miss reject or best effort, and Poisson or gamma arrivals (cv 1.5-4).

`capacity_rps` is a rough SLO-aware throughput of the cluster for a workload from the latency
model: each class decodes in batches as large as its TPOT allows and prefills at c1 per token.
`rate_grid` spreads the measured rates around it (light load to overload) so every workload is
compared where everyone fits, where the cluster is busy, and past its capacity.
"""

from __future__ import annotations

import math
import random

from services.common.domain import LatencyModel
from services.sim.workload import Workload, parse_workload

# Multiples of the estimated capacity at which a workload is measured.
RATE_FACTORS = (0.15, 0.3, 0.5, 0.7, 0.9, 1.2)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _sig(x: float, digits: int = 2) -> float:
    """x rounded to `digits` significant figures (readable rates and means in the YAML)."""
    if x <= 0:
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return round(x * scale) / scale


def _length(rng: random.Random, lo: float, hi: float, cap: int) -> dict:
    mean = max(2, int(_sig(_log_uniform(rng, lo, hi))))
    return {"dist": "lognormal", "mean": mean, "sigma": round(rng.uniform(0.2, 0.8), 2),
            "max": min(cap, max(mean * 4, mean + 1))}


def workload_doc(seed: int) -> dict:
    """One random workload document (YAML-ready dict), a pure function of `seed`."""
    rng = random.Random(f"hfx-family-{seed}")
    classes = []
    for i in range(rng.randint(2, 6)):
        classes.append({
            "name": f"c{i}",
            "weight": round(rng.uniform(0.5, 3.0), 2),
            "priority": rng.randint(0, 3),
            "on_miss": rng.choice(["reject", "best_effort"]),
            "prompt_tokens": _length(rng, 32, 4096, 8192),
            "output_tokens": _length(rng, 4, 512, 2048),
            "ttft_slo_scale": _sig(_log_uniform(rng, 1.5, 60.0)),
            "tpot_slo_scale": _sig(_log_uniform(rng, 1.2, 12.0)),
        })
    arrival: dict[str, object]
    if rng.random() < 0.3:
        arrival = {"process": "poisson"}
    else:
        arrival = {"process": "gamma", "cv": round(rng.uniform(1.5, 4.0), 1)}
    return {"classes": classes, "arrival": arrival}


def family(n: int, seed: int) -> list[tuple[str, dict]]:
    """`n` workloads of family `seed`: (name, document); workload k is workload_doc(seed*100003 + k)."""
    return [(f"s{seed}-w{k:03d}", workload_doc(seed * 100_003 + k)) for k in range(n)]


def capacity_rps(workload: Workload, model: LatencyModel, chunk_tokens: int, instances: int) -> float:
    """Requests/s the cluster can serve within the TPOT SLOs, roughly (mean lengths, no bursts).

    Per class: the largest decode batch whose step stays within its TPOT SLO, n = (TPOT - c0) /
    (c2 + c3*(L + O/2)) (at least 1); decoding O tokens then costs O*TPOT/n ms of instance time,
    prefill c1*L + ceil(L/C)*c0. Capacity = instances / (weighted mean instance time per request).
    """
    total_w = sum(c.weight for c in workload.classes)
    ms = 0.0
    for c in workload.classes:
        slo = c.slo(model, chunk_tokens)
        L, O = c.prompt_tokens.mean, c.output_tokens.mean
        per_seq = model.c2_ms_per_decode_seq + model.c3_ms_per_kv_token * (L + O / 2)
        batch = max(1.0, (slo.tpot_ms - model.c0_ms) / per_seq)
        step = min(slo.tpot_ms, model.c0_ms + batch * per_seq)
        decode_ms = O * step / batch
        prefill = model.c1_ms_per_prefill_token * L + math.ceil(L / chunk_tokens) * model.c0_ms
        ms += c.weight / total_w * (prefill + decode_ms)
    return instances * 1000.0 / ms


def rate_grid(capacity: float, factors: tuple[float, ...] = RATE_FACTORS) -> list[float]:
    """Rates (2 significant figures, distinct, ascending) at `factors` x capacity."""
    return sorted({max(0.01, _sig(capacity * f)) for f in factors})


def load_family(n: int, seed: int) -> list[tuple[str, dict, Workload]]:
    return [(name, doc, parse_workload(doc)) for name, doc in family(n, seed)]
