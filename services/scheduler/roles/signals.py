"""How hard each P/D stage is pressed, from what the scheduler knows (no I/O, no clock).

The queued requests are first split by what holds them back: one that some decode instance could
take now (its step with it added within every TPOT there and its own, its KV within the
watermark) waits for a prefill; one that no decode instance could take waits for decode room.

Prefill pressure: the prefill work for the prefill instances (their prefill legs still running,
plus the queued requests that wait for a prefill and would be split), per instance's worth of
prefill capacity (every P; with pd_local_prefill also the share of each D's time its decodes
leave free, since a D prefills what P cannot serve in time), in time by the latency models, over
the median TTFT SLO of those requests. 1.0: a request arriving now waits about its whole TTFT
for its prefill. (Measured in the simulator, pd.yaml prompt-heavy at 32 req/s, 16 instances:
4:12 met 84.4% of longdoc requests, 5:11 81.8%, 6:10 81.4%: taking a D away for a P cost prefill
capacity, because D prefilled the overflow; counting P alone had flipped D -> P there.)

Decode pressure: per decode instance, the larger of (its steady decode step with its share of the
requests waiting for decode room added) / (the tightest TPOT running there, or those requests'
median TPOT) and its KV use over the watermark; averaged over the decode instances (the scheduler
spreads new decodes, so the mean is what a new request meets). 1.0: TPOTs or KV just held.

Colocated (C) instances, where a cluster has them beside P and D: a queued request that runs
whole (a short prompt, pd.py) and that no D may prefill (pd_local_prefill off) waits for a C.
Colocated pressure is the decode pressure's measure over the C instances with those requests
shared among them. A C's free share (1 - its pressure) is prefill capacity too: pd.py places a
long prompt whole on C when no P/D pair fits it in time.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Sequence

from services.common.domain import ClusterSnapshot, InstanceView, RequestSpec, Role
from services.scheduler.policy.base import PolicyConfig, chunk_tokens_of, kv_capacity_of, latency_model_of
from services.scheduler.policy.pd import short_prompt_tokens


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
    local_prefill: bool = False  # decode instances prefill what P cannot take in time (pd_local_prefill)
    colocated: float = 0.0       # pressure of the colocated instances (0 without any)
    n_colocated: int = 0
    waiting_colocated: int = 0   # queued requests only a C may serve (whole, and D may not prefill)
    turned_away: int = 0         # refused since the last tick though an idle P would have served them

    def count(self, role: Role) -> int:
        return {Role.PREFILL: self.n_prefill, Role.DECODE: self.n_decode, Role.COLOCATED: self.n_colocated}[role]

    def pressure(self, role: Role) -> float:
        return {Role.PREFILL: self.prefill, Role.DECODE: self.decode, Role.COLOCATED: self.colocated}[role]

    def waiting(self, role: Role) -> int:
        return {Role.PREFILL: self.waiting_prefill, Role.DECODE: self.waiting_decode,
                Role.COLOCATED: self.waiting_colocated}[role]

    def prefill_capacity(self, n_prefill: int, n_decode: int, decode: float, n_colocated: int = 0,
                         colocated: float = 0.0) -> float:
        """Instances' worth of prefill: every P, plus with local prefill the share of each D's
        time its decodes leave free (a D prefills the requests P cannot serve in time), plus each
        C's free share (a C serves whole what no P/D pair can take in time)."""
        return (n_prefill + (n_decode * max(0.0, 1.0 - decode) if self.local_prefill else 0.0)
                + n_colocated * max(0.0, 1.0 - colocated))

    def after_flip(self, to_role: Role) -> tuple[float, float]:
        """(prefill, decode) pressure predicted once one instance moved between P and D."""
        from_role = Role.DECODE if to_role is Role.PREFILL else Role.PREFILL
        prefill, decode, _ = self.after_move(from_role, to_role)
        return prefill, decode

    def after_move(self, from_role: Role, to_role: Role) -> tuple[float, float, float]:
        """(prefill, decode, colocated) pressure predicted once one instance moved from
        `from_role` to `to_role`: the decode (colocated) work over one D (C) more or fewer, the
        prefill work over the prefill capacity that leaves. A stage emptied while work waits
        for it is infinitely pressed."""
        n = {r: self.count(r) + (r is to_role) - (r is from_role) for r in Role}
        decode = _spread(self.decode * self.n_decode, n[Role.DECODE], self.waiting_decode)
        colocated = _spread(self.colocated * self.n_colocated, n[Role.COLOCATED], self.waiting_colocated)
        before = self.prefill_capacity(self.n_prefill, self.n_decode, self.decode, self.n_colocated, self.colocated)
        after = self.prefill_capacity(n[Role.PREFILL], n[Role.DECODE], decode, n[Role.COLOCATED], colocated)
        return self.prefill * before / max(after, 1e-9), decode, colocated


def _spread(work: float, instances: int, waiting: int) -> float:
    if instances > 0:
        return work / instances
    return math.inf if work > 0 or waiting else 0.0


def _splits(spec: RequestSpec, config: PolicyConfig) -> bool:
    return spec.prompt_tokens > short_prompt_tokens(config)


def stage_pressure(cluster: ClusterSnapshot, waiting: Sequence[RequestSpec], config: PolicyConfig,
                   refused: Sequence[RequestSpec] = ()) -> StagePressure:
    prefill = [i for i in cluster.instances if i.role is Role.PREFILL and i.accepting]
    decode = [i for i in cluster.instances if i.role is Role.DECODE and i.accepting]
    colocated = [i for i in cluster.instances if i.role is Role.COLOCATED and i.accepting]
    # Whole requests that D may not serve wait for a C (only where the cluster has P/D at all).
    whole_on_c = [s for s in waiting if colocated and prefill and decode and not _splits(s, config)
                  and not config.pd_local_prefill]
    c_ids = {s.request_id for s in whole_on_c}
    waiting = [s for s in waiting if s.request_id not in c_ids]
    blocked = [s for s in waiting if not any(_decode_room(i, s, config) for i in decode)]
    ready = {s.request_id for s in waiting} - {s.request_id for s in blocked}
    queued = [s for s in waiting if s.request_id in ready and _splits(s, config)]
    p_legs = [r.spec for i in prefill for r in i.running if r.role is Role.PREFILL]
    tokens = sum(s.prompt_tokens for s in queued) + sum(s.prompt_tokens for s in p_legs)
    ttfts = [s.slo.ttft_ms for s in queued + p_legs if math.isfinite(s.slo.ttft_ms)]
    d_press = 0.0
    if decode:
        tpots = [s.slo.tpot_ms for s in blocked if math.isfinite(s.slo.tpot_ms)]
        share = len(blocked) / len(decode)
        d_press = statistics.fmean(_decode_pressure(i, share, tpots, config) for i in decode)
    c_press = 0.0
    if colocated:
        tpots = [s.slo.tpot_ms for s in whole_on_c if math.isfinite(s.slo.tpot_ms)]
        share = len(whole_on_c) / len(colocated)
        c_press = statistics.fmean(_decode_pressure(i, share, tpots, config) for i in colocated)
    shape = StagePressure(0.0, d_press, len(prefill), len(decode), tokens, "", len(queued), len(blocked),
                          config.pd_local_prefill, c_press, len(colocated), len(whole_on_c))
    p_press = 0.0
    missed: list[RequestSpec] = []
    if prefill:
        per_token_ms = statistics.fmean(_prefill_ms_per_token(i, config) for i in prefill + decode)
        # Turned away since the last tick for want of a prefill in time, though an idle P would
        # have served them: the stage is pressed at least to 1.0 (the requests its SLOs lost),
        # however loose the running legs' TTFTs make the mean look. The queue alone misses them:
        # a tight-TTFT request waits well under a tick before it is hopeless.
        missed = [s for s in refused if _splits(s, config) and any(_decode_room(i, s, config) for i in decode)
                  and s.prompt_tokens * per_token_ms < s.slo.ttft_ms]
        if ttfts:
            capacity = shape.prefill_capacity(len(prefill), len(decode), d_press, len(colocated), c_press)
            p_press = tokens / max(capacity, 1e-9) * per_token_ms / statistics.median(ttfts)
        if missed:
            p_press = max(p_press, 1.0)
            shape = replace(shape, waiting_prefill=shape.waiting_prefill + len(missed), turned_away=len(missed))
    detail = (f"prefill {p_press:.2f} ({tokens} prompt tokens for {len(prefill)} P, {len(queued)} requests waiting"
              + (f", {len(missed)} turned away in time for an idle P" if missed else "") + "), "
              f"decode {d_press:.2f} ({len(blocked)} queued for decode room over {len(decode)} D)"
              + (f", colocated {c_press:.2f} ({len(whole_on_c)} queued for {len(colocated)} C)" if colocated else ""))
    return replace(shape, prefill=p_press, detail=detail)


def _prefill_ms_per_token(inst: InstanceView, config: PolicyConfig) -> float:
    model = latency_model_of(inst, config)
    return model.c1_ms_per_prefill_token + model.c0_ms / max(chunk_tokens_of(inst, config), 1)


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
