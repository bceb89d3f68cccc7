"""Tickets in the simulator, as the live mesh runs them (docs/ARCHITECTURE.md, "Tickets").

The live scheduler grants routers tickets while nothing waits, and a router starts a request that
a ticket covers without asking the scheduler: such a request skips the policy's pass (its
ranking and its deferral under pressure) and runs where the ticket says. A simulator that placed
every request with a pass measured a different policy from the one that runs, so it keeps the
same desk (services/scheduler/tickets.py: bounds from the last requests, one holder), asks the
policy for the same grants (IssuesTickets) on the same cadence (after a round at most every
`refresh_s`, at once after a spend, revoked when a request queues), and spends them with the
router's rule (the best-ranked ticket whose bound covers the request). Message delays are zero.
"""

from __future__ import annotations

from services.common import convert
from services.common.domain import ClusterSnapshot, Decision, RequestSpec, Verdict
from services.common.pb.hfx.v1 import scheduler_pb2
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import IssuesTickets, Policy
from services.scheduler.tickets import TicketDesk


class _Router:
    """The one ticket holder (a router link, as the desk sees it)."""

    def __init__(self) -> None:
        self.tickets: list[scheduler_pb2.Ticket] = []

    def offer_tickets(self, tickets: scheduler_pb2.TicketSet) -> None:
        self.tickets = list(tickets.tickets)


class SimTickets:
    def __init__(self, policy: Policy, refresh_s: float = SchedulerConfig.ticket_refresh_s) -> None:
        self.policy = policy if isinstance(policy, IssuesTickets) else None
        self.desk = TicketDesk(policy.name)
        self.router = _Router()
        self.desk.attach(self.router)
        self.refresh_s = refresh_s
        self.due_s = 0.0
        self.spent = 0

    @property
    def on(self) -> bool:
        return self.policy is not None

    def saw(self, spec: RequestSpec) -> None:
        self.desk.saw(spec)

    def take(self, spec: RequestSpec, now_s: float) -> Decision | None:
        """The router's check on arrival: a placement on the best-ranked ticket that covers `spec`
        (the ticket is spent), or None (the request queues for a pass)."""
        for k, ticket in enumerate(self.router.tickets):
            if convert.ticket_bound(ticket).covers(spec, now_s):
                self.router.tickets.pop(k)
                self.desk.redeem(self.router, ticket.ticket_id)
                self.spent += 1
                return Decision(spec.request_id, Verdict.ADMIT, ticket.reason, instance_id=ticket.instance_id,
                                predicted_ttft_ms=ticket.predicted_ttft_ms)
        return None

    def refresh(self, cluster: ClusterSnapshot, queued: bool, now_s: float, force: bool = False) -> float | None:
        """The scheduler's refresh_tickets: grants while nothing is queued, none while something
        is. Returns when a deferred refresh is due (None: done now, or nothing to do)."""
        if self.policy is None:
            return None
        revoke = queued and self.desk.outstanding() > 0
        if not (force or revoke or now_s >= self.due_s):
            return self.due_s
        self.due_s = now_s + self.refresh_s
        grants = [] if queued else self.policy.tickets(cluster, self.desk.bounds(), now_s)
        self.desk.refresh(grants, {inst.instance_id: inst.address for inst in cluster.instances})
        return None
