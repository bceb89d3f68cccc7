"""Tickets: the bounds a policy is asked to grant, drawn from the requests the scheduler saw.

While nothing waits, a pass over an empty queue has nothing to rank: the only question for the
next arrival is which instance fits it. A ticket answers that ahead of time for one request
within a bound (domain.TicketBound), so the router can start it without a round trip to the
scheduler (docs/ARCHITECTURE.md, "Tickets"). Pure: the service keeps the recent requests and
hands out the grants.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from services.common.domain import RequestSpec, TicketBound

# A request reaches the router's ticket check a little after it arrived (parsing, tokenising), so
# its first-token SLO has that much less left: a bound asks for this share of the recent ones'
# TTFT, so that requests like them are still covered when they get there.
TTFT_SHARE = 0.9


def bounds_for(recent: Sequence[RequestSpec]) -> list[TicketBound]:
    """Bounds to try, widest first: the envelope of the recent requests (covers each of them),
    then their median shape (covers about half of the next ones when the envelope does not fit).
    Resumed requests are left out: they always take a full pass."""
    shapes = [s for s in recent if not s.resumed_tokens]
    if not shapes:
        return []
    envelope = TicketBound(max(s.prompt_tokens for s in shapes), max(s.max_tokens for s in shapes),
                           TTFT_SHARE * min(s.slo.ttft_ms for s in shapes), min(s.slo.tpot_ms for s in shapes))
    median = TicketBound(int(statistics.median_high([s.prompt_tokens for s in shapes])),
                         int(statistics.median_high([s.max_tokens for s in shapes])),
                         TTFT_SHARE * statistics.median_low([s.slo.ttft_ms for s in shapes]),
                         statistics.median_low([s.slo.tpot_ms for s in shapes]))
    return [envelope] if median == envelope else [envelope, median]
