"""Why a request fitted no instance: per colocated instance, the first fit test it failed and by
how much (the tests of FitTable.fits, in the order a reader checks them). Pure; the policy
notes a `Miss` when an SLO request fails to fit, keeps the latest on its queue entry, and puts
its text in the reason of the refusal that may follow, so a log line or span says which rule held
the request back (issue 9, twelfth session). The text is built only when a refusal reads it: most
misses are placed a pass or two later and nobody reads them (why_not was ~5% of the policy's time
in the simulator; issue 9, thirteenth session)."""

from __future__ import annotations

import numpy as np

from services.common.domain import RequestSpec, Role
from services.scheduler.policy.fit import FitTable


def why_not(table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float, optimistic: bool = False) -> str:
    """One phrase per colocated instance, e.g. "w0: (1) TTFT 61 > 41 ms; w1: (3) step 10.4 > 10.1 ms";
    "" when there is no colocated instance or the request fits one (nothing to explain)."""
    rows = np.flatnonzero(table.role_rows[Role.COLOCATED])
    if rows.size == 0:
        return ""
    L, O = float(spec.prompt_tokens), float(output_tokens)
    ttft_ms = table.ttft_ms(L, optimistic)
    s_new = table.s_plus_c2 + table.c3 * (L + O / 2)
    bank = table.bank_after(O, s_new - table.s) - table.c1 * L
    first_ok = table.queued_first_ok(L) if not table.reserve else np.ones(len(table.ids), dtype=bool)
    left_ms = (spec.ttft_deadline_s - now_s) * 1000.0
    lens = table.fits_len(spec)
    parts = []
    for i in map(int, rows):
        parts.append(f"{table.ids[i]}: {_first_failure(table, i, spec, O, ttft_ms[i], s_new[i], bank[i], first_ok[i], left_ms, lens)}")
    return "; ".join(parts) if not all(p.endswith(": fits") for p in parts) else ""


class Miss:
    """why_not(table, spec, output_tokens, now_s) as the table stands now, computed on first
    `text()`. The table runs `text()` before it next changes (FitTable.when_changing), so a miss
    read later says what a miss read at once would have said."""

    __slots__ = ("_args", "_text")

    def __init__(self, table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float) -> None:
        self._args: tuple[FitTable, RequestSpec, int, float] | None = (table, spec, output_tokens, now_s)
        self._text = ""
        table.when_changing(self.text)

    def text(self) -> str:
        if self._args is not None:
            self._text = why_not(*self._args)
            self._args = None   # nor does the miss keep the pass's table alive
        return self._text


def _first_failure(t: FitTable, i: int, spec: RequestSpec, O: float, ttft_ms: float, s_new: float, bank: float,
                   first_ok: bool, left_ms: float, lens) -> str:
    if not t.allowed[i]:
        return "not accepting (draining, or preempting)"
    if t.outstanding[i] >= t.config.max_requests_per_instance:
        return f"{t.outstanding[i]:.0f} requests, the most an instance takes"
    if t.bank_ms[i] <= 0:
        return f"closed: budget {t.bank_ms[i]:.0f} ms"
    if t.kv_peak[i] >= t.kv_limit[i]:
        return "closed: KV full"
    if t.s[i] + t.c2[i] > t.min_tpot[i]:
        return f"closed: one more decode {t.s[i] + t.c2[i]:.1f} > running TPOT {t.min_tpot[i]:.1f} ms"
    if bank < 0:
        return f"(2) a running request's budget {bank:.0f} ms after it"
    if s_new > t.min_tpot[i]:
        return f"(3) step {s_new:.1f} > running TPOT {t.min_tpot[i]:.1f} ms"
    if t.kv_room[i] < spec.prompt_tokens + O or not (lens if isinstance(lens, bool) else lens[i]):
        return "(4) KV or length"
    if not first_ok:
        return f"(6) a queued first token's margin {t.first_margin_ms[i]:.0f} ms"
    if ttft_ms > left_ms:
        return f"(1) TTFT {ttft_ms:.0f} > {left_ms:.0f} ms left"
    if s_new > spec.slo.tpot_ms:
        return f"(3) step {s_new:.1f} > own TPOT {spec.slo.tpot_ms:.1f} ms"
    if t.config.backlog_interferes and O > 1 and (O - 1) * (spec.slo.tpot_ms - s_new) < t.c1[i] * t.backlog[i]:
        return f"(5) queued prefill {t.backlog[i]:.0f} tokens during its decode"
    return "fits"
