"""How hard each P/D stage is pressed, from what the scheduler knows (no I/O, no clock).

The queued requests are first split by what holds them back: one that some decode instance could
take now (its step with it added within every TPOT there and its own, its KV within the
watermark) waits for a prefill; one that no decode instance could take waits for decode room.

Prefill pressure: the prefill work for the prefill instances (their prefill legs still running,
plus the queued requests that wait for a prefill and would be split), per prefill instance, in
time by their latency models, over the median TTFT SLO of those requests. 1.0: a request
arriving now waits about its whole TTFT for its prefill.

Decode pressure: per decode instance, the larger of (its steady decode step with its share of the
requests waiting for decode room added) / (the tightest TPOT running there, or those requests'
median TPOT) and its KV use over the watermark; averaged over the decode instances (the scheduler
spreads new decodes, so the mean is what a new request meets). 1.0: TPOTs or KV just held.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from services.common.domain import ClusterSnapshot, InstanceView, RequestSpec, Role
from services.scheduler.policy.base import PolicyConfig, kv_capacity_of, latency_model_of


@dataclass(frozen=True)
class StagePressure:
    prefill: float
    decode: float
    n_prefill: int
    n_decode: int
    queued_prefill_tokens: int
    detail: str
    waiting_prefill: int = 0     # queued requests some D could take: they wait for a prefill
    waiting_decode: int = 0      # queued requests no D could take: they wait for decode room

    def after_flip(self, to_role: Role) -> tuple[float, float]:
        """(prefill, decode) pressure predicted once one instance moved to `to_role`: the same work
        over one more (or one fewer) instance of each stage."""
        if to_role is Role.PREFILL:
            return (self.prefill * self.n_prefill / (self.n_prefill + 1),
                    self.decode * self.n_decode / max(self.n_decode - 1, 1e-9))
        return (self.prefill * self.n_prefill / max(self.n_prefill - 1, 1e-9),
                self.decode * self.n_decode / (self.n_decode + 1))


def _splits(spec: RequestSpec, config: PolicyConfig) -> bool:
    return spec.prompt_tokens > config.pd_local_prompt_tokens


def stage_pressure(cluster: ClusterSnapshot, waiting: Sequence[RequestSpec], config: PolicyConfig) -> StagePressure:
    prefill = [i for i in cluster.instances if i.role is Role.PREFILL and i.accepting]
    decode = [i for i in cluster.instances if i.role is Role.DECODE and i.accepting]
    blocked = [s for s in waiting if not any(_decode_room(i, s, config) for i in decode)]
    ready = {s.request_id for s in waiting} - {s.request_id for s in blocked}
    queued = [s for s in waiting if s.request_id in ready and _splits(s, config)]
    p_legs = [r.spec for i in prefill for r in i.running if r.role is Role.PREFILL]
    tokens = sum(s.prompt_tokens for s in queued) + sum(s.prompt_tokens for s in p_legs)
    ttfts = [s.slo.ttft_ms for s in queued + p_legs if math.isfinite(s.slo.ttft_ms)]
    p_press = 0.0
    if prefill and ttfts:
        per_token_ms = statistics.fmean(_prefill_ms_per_token(i, config) for i in prefill)
        p_press = tokens / len(prefill) * per_token_ms / statistics.median(ttfts)
    d_press = 0.0
    if decode:
        tpots = [s.slo.tpot_ms for s in blocked if math.isfinite(s.slo.tpot_ms)]
        share = len(blocked) / len(decode)
        d_press = statistics.fmean(_decode_pressure(i, share, tpots, config) for i in decode)
    detail = (f"prefill {p_press:.2f} ({tokens} prompt tokens for {len(prefill)} P, {len(queued)} requests waiting), "
              f"decode {d_press:.2f} ({len(blocked)} queued for decode room over {len(decode)} D)")
    return StagePressure(p_press, d_press, len(prefill), len(decode), tokens, detail, len(queued), len(blocked))


def _prefill_ms_per_token(inst: InstanceView, config: PolicyConfig) -> float:
    model = latency_model_of(inst, config)
    return model.c1_ms_per_prefill_token + model.c0_ms / max(config.chunk_tokens, 1)


def _decode_legs(inst: InstanceView) -> tuple[list[RequestSpec], float]:
    legs = [r.spec for r in inst.running if r.role is not Role.PREFILL]
    return legs, sum(s.prompt_tokens + s.max_tokens / 2 for s in legs)


def _decode_room(inst: InstanceView, spec: RequestSpec, config: PolicyConfig) -> bool:
    """Could `inst` decode `spec` now: its step with it added within every TPOT (fit.py (3)) and
    its KV within the watermark (4), at the policy's prior output length."""
    model = latency_model_of(inst, config)
    legs, kv_tokens = _decode_legs(inst)
    out = min(spec.max_tokens, config.prior_output_tokens)
    step_ms = model.step_ms(0, len(legs) + 1, round(kv_tokens + spec.prompt_tokens + out / 2))
    tightest = min([s.slo.tpot_ms for s in legs] + [spec.slo.tpot_ms])
    room = kv_capacity_of(inst, config) * (1.0 - config.kv_watermark) - kv_tokens
    return step_ms <= tightest and spec.prompt_tokens + out <= room


def _decode_pressure(inst: InstanceView, share: float, queued_tpots: list[float], config: PolicyConfig) -> float:
    model = latency_model_of(inst, config)
    legs, kv_tokens = _decode_legs(inst)
    step_ms = model.step_ms(0, round(len(legs) + share), round(kv_tokens))
    tpots = [s.slo.tpot_ms for s in legs if math.isfinite(s.slo.tpot_ms)] or queued_tpots
    tpot_press = step_ms / min(tpots) if tpots else 0.0
    kv_press = inst.load.kv_usage / max(1.0 - config.kv_watermark, 1e-9)
    kv_held = kv_tokens / max(kv_capacity_of(inst, config) * (1.0 - config.kv_watermark), 1.0)
    return max(tpot_press, kv_press, kv_held)
