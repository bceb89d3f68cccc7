"""A refusal weighed at a request's last chance (issue 17, twelfth pass; docs/SCHEDULING.md "Last chance").

Fit test (2) refuses a newcomer that would push any protected running request below its bank,
however little, and however little the newcomer has left: at its last chance the refusal is a
certain miss for it. Here the two are weighed: refusing costs one miss (its own); placing costs,
per running request it pushes from a bank >= 0 to below 0, the share of a miss its deficit is of
`slip` x the time its remaining tokens are allowed (deficit / (slip x remaining x TPOT), at most
one). One already below its bank is lost either way and costs nothing more. It is placed where
placing costs less than refusing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.domain import Decision, RequestSpec, Verdict
from services.scheduler.policy.fit import FitTable


@dataclass(frozen=True)
class Weighed:
    """What placing costs the running requests of one instance, in misses."""

    cost: float            # expected misses among them (sum of shares, each at most 1)
    pushed: int            # how many go from a bank >= 0 to below it
    worst_ms: float        # the largest deficit among them
    remaining: float       # that one's remaining decode steps

    def reason(self) -> str:
        if not self.pushed:
            return "last chance weighed: refusing is a sure miss; placing pushes none below its bank (those it cuts into are below it already)"
        return (f"last chance weighed: refusing is a sure miss; placing pushes {self.pushed} running below "
                f"its bank (worst -{self.worst_ms:.1f} ms over {self.remaining:.0f} tokens), "
                f"{self.cost:.2f} of a miss")


def weigh(before_ms: np.ndarray, after_ms: np.ndarray, remaining: np.ndarray, tpots_ms: np.ndarray,
          slip: float) -> Weighed:
    """Pure: the cost of a placement that takes the running requests' banks from `before_ms` to
    `after_ms` (one entry per protected running request, with its remaining decode steps and TPOT)."""
    pushed = (before_ms >= 0) & (after_ms < 0)
    if not pushed.any():
        return Weighed(0.0, 0, 0.0, 0.0)
    deficit = -after_ms[pushed]
    allowed_ms = slip * np.maximum(remaining[pushed], 1.0) * tpots_ms[pushed]
    share = np.minimum(1.0, deficit / np.maximum(allowed_ms, 1e-9))
    worst = int(np.argmax(deficit))
    return Weighed(float(share.sum()), int(pushed.sum()), float(deficit[worst]), float(remaining[pushed][worst]))


def weighed_fit(table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float,
                slip: float) -> tuple[int, float, Weighed] | None:
    """The instance where placing costs least (then the least predicted TTFT) among those that
    pass every test but (2) (its first token on time, not counting the step in flight), as
    (index, predicted TTFT ms, its cost), when that cost is below one miss; else None."""
    if slip <= 0:
        return None
    ok, ttft_ms = table.fits(spec, output_tokens, now_s, best_effort=False, optimistic=True, bank_test=False)
    L, O = float(spec.prompt_tokens), float(output_tokens)
    delta = table.s_plus_c2 + table.c3 * (L + O / 2) - table.s
    best: tuple[float, float, int, Weighed] | None = None
    for idx in map(int, np.flatnonzero(ok)):
        rows = table.flat_row == idx
        before = table.flat_bank[rows]
        # Under strain, as test (2): each is charged for the instance's longest remaining run (room
        # kept for arrivals to come; charged for their own runs only, s2-w008 @ 62 lost 7 of 200).
        steps = table.max_rem[idx] if table.reserve else table.flat_rem[rows]
        after = before - np.minimum(O, steps) * delta[idx] - table.c1[idx] * L
        w = weigh(before, after, table.flat_rem[rows], table.flat_tpot[rows], slip)
        key = (w.cost, float(ttft_ms[idx]), idx, w)
        if w.cost < 1.0 and (best is None or key[:2] < best[:2]):
            best = key
    return None if best is None else (best[2], best[1], best[3])


def weighed_admit(table: FitTable, spec: RequestSpec, output_tokens: int, now_s: float, slack_ms: float,
                  slip: float) -> Decision | None:
    """weighed_fit, applied: placed on `table` and its Decision (reason with the weighing), or None."""
    found = weighed_fit(table, spec, output_tokens, now_s, slip)
    if found is None:
        return None
    idx, ttft_ms, w = found
    budget_ms = float(table.bank_ms[idx])
    table.place(idx, spec, output_tokens, now_s, protected=True)
    reason = (f"slack {slack_ms:.0f} ms; predicted TTFT {ttft_ms:.0f} of {spec.slo.ttft_ms:.0f} ms; "
              f"budget {budget_ms:.0f} ms; -> {table.ids[idx]}; {w.reason()}")
    return Decision(spec.request_id, Verdict.ADMIT, reason, instance_id=table.ids[idx],
                    predicted_ttft_ms=ttft_ms, slack_ms=slack_ms, budget_ms=budget_ms)
