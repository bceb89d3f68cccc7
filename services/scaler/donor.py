"""Donor choice for a new worker's weights (issue 12): a pure function over the registry.

A new worker of model M takes its weights from a live worker of M that serves its weight stream
(`Instance.weights_address`) and is not draining; among those, the least loaded (running +
waiting requests, then KV usage, then id, so the choice is stable), because the stream costs its
donor CPU time (BENCHMARKS.md, "Weights from a peer"). No such worker: the new one reads storage.
P/D links do not exist in this build, so "linked donors first" has nothing to act on yet.
A standby that already mapped one donor's weights (PrepareWeights) takes that donor while it is
still one: over shared memory the pull costs its donor no CPU (the receiver reads the donor's
pages), and the mapping saves the pull its page faults. How each worker finally got its weights (a pull can fall back to storage) is the worker's own
record: `Instance.weights_source` in the registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.common.pb.hfx.v1 import common_pb2


@dataclass(frozen=True)
class DonorCandidate:
    instance_id: str
    model: str
    weights_address: str
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    draining: bool = False

    @classmethod
    def from_pb(cls, inst: common_pb2.Instance) -> DonorCandidate:
        return cls(inst.instance_id, inst.model, inst.weights_address, inst.load.running_requests,
                   inst.load.waiting_requests, inst.load.kv_usage, inst.load.draining)


@dataclass(frozen=True)
class DonorChoice:
    address: str      # the donor's weight stream, "" when the new worker reads storage
    instance_id: str
    reason: str


def choose_donor(candidates: Iterable[DonorCandidate], model: str, exclude: str = "", prepared: str = ""
                 ) -> DonorChoice:
    """prepared: the weight address the receiver already mapped ahead ("" = none)."""
    same_model = [c for c in candidates if c.model == model and c.instance_id != exclude]
    donors = [c for c in same_model if c.weights_address and not c.draining]
    if not donors:
        return DonorChoice("", "", f"storage: none of {len(same_model)} live worker(s) of the model serves weights")
    ready = [c for c in donors if prepared and c.weights_address == prepared]
    if ready:
        return DonorChoice(prepared, ready[0].instance_id, f"donor {ready[0].instance_id}: its weights already "
                           f"mapped by this standby (one of {len(donors)} donor(s))")
    best = min(donors, key=lambda c: (c.running + c.waiting, c.kv_usage, c.instance_id))
    return DonorChoice(best.weights_address, best.instance_id,
                       f"donor {best.instance_id} (running {best.running}, waiting {best.waiting}, "
                       f"kv {best.kv_usage:.2f}): least loaded of {len(donors)} donor(s)")
