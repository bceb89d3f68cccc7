"""Whole or split: where one request runs, in a cluster that may hold colocated (C), prefill (P)
and decode (D) instances at once (docs/ARCHITECTURE.md, "P/D scheduling").

The rule, per request:
- no P or no D instance: whole, on C (or, with no C either, prefilled on D itself when
  pd_local_prefill allows it);
- a short prompt (<= pd_local_prompt_tokens, or, where D may prefill, <= pd_local_chunk_share x
  chunk_tokens: half a step's token budget by default), or one whose unloaded prefill costs no
  more than moving its KV: whole first (C, then D itself), split only if neither fits. The
  handoff would cost it more than it saves D, whose decodes it interrupts for one short chunk at
  most; and on P a long prompt placed before its step begins rides in that step, delaying its
  first token by more than its own prefill (chunk_tokens - L > L tokens; measured live, issue
  10 ninth session: chat first tokens after 126-162 ms, with a long document's chunk, on P);
- otherwise split first (P prefills, D decodes: D's steps stay free of long prefill chunks, which
  is what protects tight TPOTs); when no (P, D) pair fits (P's queue too long for its TTFT, say),
  whole on C, then prefilled on D itself, each only if its fit test passes: that test charges the
  prefill to every request running there (fit.py (2), (5)), so D's decodes stay protected.
  (Measured in the simulator before the P-queue fix, pd.yaml, 16 instances at 40 req/s, seed 1:
  on the first 1500 requests this fallback took HFX from 88.4% to 96.1% at 4:12 and from 94.3%
  to 95.3% at 6:10, chat requests stuck behind long prefills on P being refused without it; on
  3000 requests it changed nothing, 95.8% / 92.2% both ways.)
Each option is tested by the fit tests (fit.py for whole, stages.py for split); the first that
fits wins, and the Placement's reason says which option won and why the earlier ones did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.common.domain import InstanceView, LatencyModel, Leg, RequestSpec, Role
from services.scheduler.policy.base import PolicyConfig, chunk_tokens_of, latency_model_of
from services.scheduler.policy.budget import prefill_ms
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.stages import split_fit

WHOLE_ON_COLOCATED = "colocated"
WHOLE_ON_DECODE = "prefill on D"
SPLIT = "P/D"


@dataclass(frozen=True)
class Plan:
    """Where a request goes: its legs (instance indices into the FitTable) and why."""

    legs: tuple[tuple[Role, int], ...]   # (PREFILL, p), (DECODE, d)  or  (COLOCATED, idx)
    ttft_ms: float
    how: str             # the placement detail for the reason
    why: str             # why this option (whole or split) was taken


def options(table: FitTable, spec: RequestSpec, config: PolicyConfig) -> tuple[list[str], str]:
    """The options to try, in order, and why that order."""
    local = [WHOLE_ON_COLOCATED] if table.has(Role.COLOCATED) else []
    if config.pd_local_prefill and table.has(Role.DECODE):
        local.append(WHOLE_ON_DECODE)
    if not (table.has(Role.PREFILL) and table.has(Role.DECODE)):
        only_colocated = not (table.has(Role.PREFILL) or table.has(Role.DECODE))
        return local, "" if only_colocated else "no P/D pair"
    L = spec.prompt_tokens
    short = short_prompt_tokens(config)
    if L <= short:
        return local + [SPLIT], f"short prompt ({L} <= {short} tokens)"
    own_ms = unloaded_prefill_ms(table, L, config)
    xfer_ms = float(table.xfer[table.role_rows[Role.PREFILL]].min()) * L
    if own_ms <= xfer_ms:
        return local + [SPLIT], f"prefill {own_ms:.1f} ms <= KV transfer {xfer_ms:.1f} ms"
    return [SPLIT] + local, f"prefill {own_ms:.1f} ms > KV transfer {xfer_ms:.1f} ms"


def short_prompt_tokens(config: PolicyConfig) -> int:
    """Prompts this long or shorter are served whole first (C, then prefilled on D itself): at most
    pd_local_prompt_tokens, or, where D may prefill (pd_local_prefill), pd_local_chunk_share of a
    step's token budget, whichever is more: that share keeps short prompts off P for D's sake."""
    if not config.pd_local_prefill:
        return config.pd_local_prompt_tokens
    return max(config.pd_local_prompt_tokens, int(config.pd_local_chunk_share * config.chunk_tokens))


def prefill_models(instances: Sequence[InstanceView], config: PolicyConfig) -> tuple[tuple[LatencyModel, int], ...]:
    """The latency models, each with its engine's step budget (chunk_tokens_of), of the instances
    that may prefill a request: colocated and prefill ones,
    and decode ones where pd_local_prefill lets them. A request is out of reach only if its
    prefill is late on the fastest of these, each by its own c1: a D's c1 says nothing of P's
    (issue 10, ninth session: the reference was the instance with the fastest decode step, a D
    whose c1 read 6x P's, and a chat prompt of 1,427 tokens P prefills in ~70 ms was refused as
    needing 176 ms of a 117-ms TTFT)."""
    return tuple((latency_model_of(inst, config), chunk_tokens_of(inst, config)) for inst in instances
                 if inst.role is not Role.DECODE or config.pd_local_prefill)


def fastest_prefill_ms(models: Sequence[tuple[LatencyModel, int]], prompt_tokens: float) -> float:
    """The prompt's prefill on an idle instance, the fastest of `models` (prefill_models; inf for none)."""
    return min((prefill_ms(m, prompt_tokens, chunk) for m, chunk in models), default=float("inf"))


def unloaded_prefill_ms(table: FitTable, prompt_tokens: int, config: PolicyConfig) -> float:
    """The prompt's prefill on the fastest instance that could serve it whole (C or D), idle."""
    rows = table.role_rows[Role.COLOCATED] | table.role_rows[Role.DECODE]
    steps = np.ceil(prompt_tokens / table.chunk)
    return float((steps * table.c0 + table.c1 * prompt_tokens)[rows].min())


def plan(table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float, config: PolicyConfig,
         best_effort: bool, optimistic: bool = False) -> Plan | None:
    order, why = options(table, spec, config)
    missed: list[str] = []
    for option in order:
        if option == SPLIT:
            split = split_fit(table, spec, output_tokens, now_s, best_effort, optimistic)
            if split is not None:
                how = (f"prefill -> {table.ids[split.prefill_idx]} ({split.n_prefill} fit, KV transfer "
                       f"{split.xfer_ms:.1f} ms), decode -> {table.ids[split.decode_idx]} ({split.n_decode} fit, "
                       f"step {split.decode_step_ms:.1f} of TPOT {spec.slo.tpot_ms:.0f} ms)")
                return Plan(((Role.PREFILL, split.prefill_idx), (Role.DECODE, split.decode_idx)),
                            split.ttft_ms, how, _why(SPLIT, why, missed))
        else:
            role = Role.COLOCATED if option == WHOLE_ON_COLOCATED else Role.DECODE
            fit = table.fit(spec, output_tokens, now_s, best_effort, optimistic, role=role)
            if fit is not None:
                idx, ttft_ms, n_fit, how = fit
                return Plan(((Role.COLOCATED, idx),), ttft_ms, f"{how} -> {table.ids[idx]} ({n_fit} fit)",
                            _why(option, why, missed))
        missed.append(option)
    return None


def _why(option: str, why: str, missed: list[str]) -> str:
    if option == WHOLE_ON_COLOCATED and not why and not missed:
        return ""   # a colocated cluster: nothing to choose
    parts = [option]
    if why:
        parts.append(why)
    if missed:
        parts.append(f"{' and '.join(missed)} did not fit")
    return ": ".join(parts[:2]) + ("; " + parts[2] if len(parts) > 2 else "")


def legs_of(plan_: Plan, table: FitTable) -> tuple[Leg, ...]:
    """The Decision's legs: () for a whole request (colocated on its instance)."""
    if len(plan_.legs) == 1:
        return ()
    return tuple(Leg(role, table.ids[idx]) for role, idx in plan_.legs)
