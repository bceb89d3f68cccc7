"""The scheduler's ticket desk: which router holds which instance's ticket.

The policy decides where a request within a bound fits (IssuesTickets); the desk keeps the
requests it draws bounds from, gives each granted instance's ticket to one router link at a time
(so two routers never spend tickets on the same room), sends a link its set only when it changes,
and takes tickets back when they are spent. See docs/ARCHITECTURE.md, "Tickets".
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Mapping, Protocol

from services.common import convert
from services.common.domain import Grant, RequestSpec, ScheduleResult, TicketBound, Verdict
from services.common.pb.hfx.v1 import scheduler_pb2
from services.scheduler.policy.tickets import bounds_for

_REMEMBERED = 4096   # issued tickets whose instance is still known when spent after a revocation


def outdated_by(result: ScheduleResult) -> bool:
    """Tickets are granted on the instances as a round found them; a round that placed or
    preempted anything changed that room, so the tickets are granted again at once, not at the
    next refresh (issue 17, third pass: a ticket granted before a pass put a 2,290-token prompt on
    its instance was spent right after by a 51-ms-TTFT request, which then missed by 27 ms)."""
    return bool(result.preemptions) or any(d.verdict is not Verdict.REJECT for d in result.decisions)


class Holder(Protocol):
    """A router link, as the desk sees it."""

    def offer_tickets(self, tickets: scheduler_pb2.TicketSet) -> None: ...


class TicketDesk:
    def __init__(self, policy_name: str, recent: int = 64) -> None:
        self.policy_name = policy_name
        self._recent: collections.deque[RequestSpec] = collections.deque(maxlen=recent)
        self._bounds: list[TicketBound] | None = None
        self._held: dict[Holder, dict[str, scheduler_pb2.Ticket]] = {}   # link -> instance -> ticket
        self._issued: collections.OrderedDict[str, str] = collections.OrderedDict()  # recent ticket -> instance
        self._ids = itertools.count(1)

    def saw(self, spec: RequestSpec) -> None:
        """A request's shape, for the bounds of later tickets."""
        if not spec.resumed_tokens:
            self._recent.append(spec)
            self._bounds = None

    def bounds(self) -> list[TicketBound]:
        if self._bounds is None:
            self._bounds = bounds_for(self._recent)
        return self._bounds

    def attach(self, link: Holder) -> None:
        self._held.setdefault(link, {})

    def detach(self, link: Holder) -> None:
        self._held.pop(link, None)

    def redeem(self, link: Holder, ticket_id: str) -> tuple[str, scheduler_pb2.Ticket | None]:
        """Where the spent ticket placed its request, and the ticket, taken back; the ticket is
        None when it was no longer outstanding (revoked while the router spent it) and the
        instance "" when the ticket is unknown (never issued, or long forgotten)."""
        held = self._held.get(link, {})
        for iid, ticket in held.items():
            if ticket.ticket_id == ticket_id:
                del held[iid]
                return iid, ticket
        return self._issued.get(ticket_id, ""), None

    def outstanding(self) -> int:
        return sum(len(h) for h in self._held.values())

    def refresh(self, grants: Iterable[Grant], addresses: Mapping[str, str]) -> None:
        """Hand out `grants` (none: revoke all). An instance stays with the link holding its
        ticket when the bound is the same; a new one goes to the link holding fewest."""
        if not self._held:
            return
        wanted: dict[Holder, dict[str, Grant]] = {link: {} for link in self._held}
        for grant in grants:
            if grant.instance_id not in addresses:
                continue
            owner = next((link for link, held in self._held.items()
                          if (t := held.get(grant.instance_id)) is not None
                          and convert.ticket_bound(t) == grant.bound), None)
            if owner is None:
                owner = min(wanted, key=lambda link: len(wanted[link]))
            wanted[owner][grant.instance_id] = grant
        for link, grants_here in wanted.items():
            held = self._held[link]
            if _same(held, grants_here):
                continue
            fresh: dict[str, scheduler_pb2.Ticket] = {}
            for iid, grant in grants_here.items():
                kept = held.get(iid)
                if kept is not None and convert.ticket_bound(kept) == grant.bound:
                    kept.rank = grant.rank
                    fresh[iid] = kept
                else:
                    fresh[iid] = convert.grant_to_ticket(grant, f"t{next(self._ids)}", addresses[iid], self.policy_name)
                    self._issued[fresh[iid].ticket_id] = iid
                    if len(self._issued) > _REMEMBERED:
                        self._issued.popitem(last=False)
            self._held[link] = fresh
            ordered = sorted(fresh.values(), key=lambda t: t.rank)
            link.offer_tickets(scheduler_pb2.TicketSet(tickets=ordered))


def _same(held: Mapping[str, scheduler_pb2.Ticket], grants: Mapping[str, Grant]) -> bool:
    """Same instances and bounds: nothing worth a message. (A new order of preference alone is
    not: it changes with every placement and completion, and any ticket held still fits.)"""
    if held.keys() != grants.keys():
        return False
    return all(convert.ticket_bound(held[iid]) == g.bound for iid, g in grants.items())
