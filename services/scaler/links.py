"""P-D links, the pure part (issue 11): which prefill instances may hand KV to which decode
instances, and what to change when instances join, leave or change role.

Every live prefill instance is linked to every live decode instance (full bipartite: the
scheduler then chooses any pair, as before links existed, but only among pairs whose KV path
was opened and tried). A link is added only after a warm-up transfer over it succeeded, so an
instance takes split traffic only with its KV paths in place; a link is removed as soon as either
end is gone from the registry, has exited, or no longer plays that end's role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from services.common.domain import Role

Pair = tuple[str, str]   # (prefill instance id, decode instance id)


@dataclass(frozen=True)
class LinkPlan:
    add: tuple[Pair, ...] = ()
    remove: tuple[tuple[Pair, str], ...] = ()   # (pair, why)


def plan_links(roles: Mapping[str, Role], existing: Iterable[Pair], gone: Iterable[str] = ()) -> LinkPlan:
    """roles: the live instances (registry) and their roles; gone: ids known dead although the
    registry still lists them (their process exited); existing: the links in the table."""
    dead = set(gone)
    prefill = sorted(i for i, r in roles.items() if r is Role.PREFILL and i not in dead)
    decode = sorted(i for i, r in roles.items() if r is Role.DECODE and i not in dead)
    wanted = {(p, d) for p in prefill for d in decode}
    have = set(existing)
    remove = tuple((pair, _why_not(pair, roles, dead)) for pair in sorted(have - wanted))
    return LinkPlan(add=tuple(sorted(wanted - have)), remove=remove)


def _why_not(pair: Pair, roles: Mapping[str, Role], dead: set[str]) -> str:
    for iid, role in zip(pair, (Role.PREFILL, Role.DECODE)):
        if iid in dead:
            return f"{iid} exited"
        if iid not in roles:
            return f"{iid} left the registry"
        if roles[iid] is not role:
            return f"{iid} is now {roles[iid].value}"
    return "not wanted"
