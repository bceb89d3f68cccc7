"""The scheduler's running set, checked against what the workers say they run. Pure.

The scheduler counts a request on an instance from its placement until the router's Complete.
Two things break that bookkeeping: a scheduler restart (it forgets everything that runs) and a
router that dies (its Completes never come). Workers list the requests they run in their load
reports, so each report settles it for that instance:
  - a listed request the scheduler does not know is adopted (as placed when it started, resumed
    after the tokens it has streamed), so budgets after a restart match budgets before it;
  - a counted request placed more than `grace_s` before the report and not listed has ended
    unseen, and is let go (otherwise the instance looks busier than it is, forever).
"""

from __future__ import annotations

from typing import AbstractSet, Mapping, Sequence

from services.common.domain import ReportedRun, RunningRequest

# From a placement to the request being listed by its worker: the router's start message and the
# worker taking it (milliseconds), with a wide margin for a loaded machine.
DEFAULT_GRACE_S = 3.0


def reconcile(known: Mapping[str, RunningRequest], reported: Sequence[ReportedRun], reported_s: float,
              grace_s: float = DEFAULT_GRACE_S, adopted: AbstractSet[str] = frozenset()
              ) -> tuple[list[RunningRequest], list[str]]:
    """(requests to adopt, request ids to let go) for one instance's report. `adopted`: ids
    counted only because a report listed them; they go as soon as one no longer does (no
    placement of theirs can be on its way)."""
    listed = {r.request_id for r in reported}
    adopt = [RunningRequest(r.as_spec(), r.started_s) for r in reported if r.request_id not in known]
    gone = [rid for rid, run in known.items()
            if rid not in listed and (rid in adopted or run.placed_s < reported_s - grace_s)]
    return adopt, gone
