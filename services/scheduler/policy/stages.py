"""The P/D fit test: a request split into a prefill leg on P and a decode leg on D.

Notation as in fit.py. For a request of L prompt tokens and O expected output tokens:
- decode stage, on D (ranked by TPOT budget, then free KV room):
   (2) bank_r - min(O, remaining_r)*(s' - s) >= 0 (no c1*L: D prefills nothing; the prompt's
       KV arrives from P), (3) s' = c0 + c2*(n+1) + c3*(kv + L + O/2) <= min(TPOT of running,
       own TPOT), (4) kv_peak + L + O <= capacity*(1 - watermark), (5) as in fit.py.
   Its first token comes from D after the KV arrives: the last prompt token is recomputed there,
   behind D's queued prefill:  first_D = w_D + ceil((B_D+1)/C'_D)*s_D + c1_D*(B_D+1).
- prefill stage, on P (ranked by TTFT slack, the transfer included):
   ttft = w_P + ceil((B_P+L)/C'_P)*s_P + c1_P*(B_P+L)  +  xfer_P * L  +  first_D
        <= ttft_deadline - now,
   and P's KV holds L+1 until the handoff. P runs no decodes, so no TPOT test applies there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.domain import RequestSpec, Role
from services.scheduler.policy.fit import FitTable


@dataclass(frozen=True)
class Split:
    prefill_idx: int
    decode_idx: int
    ttft_ms: float        # predicted, the transfer included
    xfer_ms: float        # of which the KV transfer
    decode_step_ms: float  # D's steady step with this request decoding there
    n_prefill: int        # how many P and D instances passed their stage's test
    n_decode: int


def decode_fit(table: FitTable, spec: RequestSpec, output_tokens: int,
               best_effort: bool, optimistic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fits, steady step with it, ms from KV arrival to its first token) per instance."""
    L, O = float(spec.prompt_tokens), float(output_tokens)
    s_new = table.s_plus_c2 + table.c3 * (L + O / 2)
    ok = table.open & table.role_rows[Role.DECODE]
    ok &= (table.bank_after(O, s_new - table.s) >= 0) & (s_new <= table.min_tpot)
    ok &= (table.kv_room >= L + O) & table.fits_len(spec)
    if not best_effort:
        ok &= s_new <= spec.slo.tpot_ms
        if table.config.backlog_interferes and O > 1:
            ok &= (O - 1) * (spec.slo.tpot_ms - s_new) >= table.c1 * table.backlog
    return ok, s_new, table.ttft_ms(1.0, optimistic)


def prefill_fit(table: FitTable, spec: RequestSpec, optimistic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fits, ms until P's prefill ends, ms of the KV transfer) per instance."""
    L = float(spec.prompt_tokens)
    ok = table.open & table.role_rows[Role.PREFILL] & (table.kv_room >= L + 1) & table.fits_len(spec)
    if not table.reserve:   # fit.py (6): first tokens queued behind P's step in flight
        ok &= table.queued_first_ok(L)
    # A P that was a D moments ago may still run decodes (a role change lets them finish there):
    # the prefill's chunks then eat into their bank as on any instance (fit.py (2)). Elsewhere n = 0.
    ok &= (table.n == 0) | (table.bank_ms - table.c1 * L >= 0)
    return ok, table.ttft_ms(L, optimistic), table.xfer * L


def split_fit(table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float,
              best_effort: bool, optimistic: bool = False) -> Split | None:
    """The best (P, D) pair, or None. D first: among the D instances that pass the decode test,
    `spread` takes the one with the fastest step with it added (the most TPOT headroom),
    `best_fit` the slowest that still fits (consolidates), ties to the most free KV. Then the P
    with the least predicted TTFT through that D (the most TTFT slack). If no P meets the TTFT
    through that D, the D with the earliest first token is tried once more."""
    d_ok, s_new, first_ms = decode_fit(table, spec, output_tokens, best_effort, optimistic)
    p_ok, prefill_ms, xfer_ms = prefill_fit(table, spec, optimistic)
    if table.linked is not None:   # only linked pairs (docs/ARCHITECTURE.md, "P-D links")
        d_ok = d_ok & table.linked[p_ok].any(axis=0)
    if not d_ok.any() or not p_ok.any():
        return None
    sign = 1.0 if table.config.placement == "spread" else -1.0
    room = table.kv_room / np.maximum(table.kv_limit, 1.0)
    # SLO affinity first when configured or while a TPOT is tight (fit.py affinity_band), as for
    # whole requests.
    key = table.affinity_band(spec.slo.tpot_ms) * 1e6 + sign * s_new
    by_tpot = int(np.lexsort((-room, np.where(d_ok, key, np.inf)))[0])
    by_first = int(np.argmin(np.where(d_ok, first_ms, np.inf)))
    budget_ms = (spec.ttft_deadline_s - now_s) * 1000.0
    for d in dict.fromkeys((by_tpot, by_first)):
        total = prefill_ms + xfer_ms + first_ms[d]
        ok = p_ok if table.linked is None else p_ok & table.linked[:, d]
        ok = ok if best_effort else ok & (total <= budget_ms)
        if ok.any():
            p = int(np.argmin(np.where(ok, total, np.inf)))
            return Split(p, d, float(total[p]), float(xfer_ms[p]), float(s_new[d]), int(ok.sum()), int(d_ok.sum()))
    return None
