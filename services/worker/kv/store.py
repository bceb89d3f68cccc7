"""P's staging store: each transfer's KV blocks held under a lease until D acknowledges them, the
transfer is released (abort), or the lease expires. Pure bookkeeping: the caller passes the time,
and the caller's server thread calls `expire(now)`; one lock makes it safe across threads."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Staged:
    transfer_id: str
    blocks: Sequence[memoryview]   # one buffer per KV block (all layers), in token order
    crc32: Sequence[int]
    num_tokens: int
    layout: dict                   # what D checks before loading: dtype, per-layer block shape, layers
    expires_s: float
    release: Callable[[], None] | None = None  # frees the blocks' memory (unmap, unlink)
    path: str = ""       # the shared-memory file the blocks are in, from `offset`: a reader on this
    offset: int = 0      # host copies them from there (its own file, or the folder's arena)
    in_arena: bool = False

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blocks)


@dataclass(frozen=True)
class StoreStats:
    leases: int
    blocks: int
    bytes: int
    freed: dict[str, int]  # reason -> transfers freed for it, since start
    freed_blocks: dict[str, int]  # reason -> their blocks ("expired": leaked until the lease ran out)


GONE_REMEMBERED = 4096


class StagingStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._staged: dict[str, Staged] = {}
        self._freed: dict[str, int] = {}
        self._freed_blocks: dict[str, int] = {}
        # Recently freed transfers and why: a pull for one of them is answered at once, where a
        # pull for an id not seen yet may be early (P's client learns the id a moment before
        # the blocks are staged) and may wait for it a little.
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()

    def stage(self, staged: Staged) -> None:
        with self._lock:
            if staged.transfer_id in self._staged or staged.transfer_id in self._gone:
                raise ValueError(f"transfer {staged.transfer_id!r} was staged before")
            self._staged[staged.transfer_id] = staged

    def get(self, transfer_id: str, now_s: float) -> tuple[Staged | None, str]:
        """The staged transfer and "", or None and why not ("expired", "acked", ..., "unknown"
        when never staged here)."""
        with self._lock:
            staged = self._staged.get(transfer_id)
            if staged is not None and staged.expires_s > now_s:
                return staged, ""
            if staged is not None:
                return None, "expired"
            return None, self._gone.get(transfer_id, "unknown")

    def knows(self, transfer_id: str) -> bool:
        with self._lock:
            return transfer_id in self._staged or transfer_id in self._gone

    def free(self, transfer_id: str, reason: str) -> bool:
        """Drop a transfer (ack, nack, release) and its memory; True when it was still held."""
        staged = self.take(transfer_id, reason)
        if staged is not None and staged.release is not None:
            staged.release()
        return staged is not None

    def take(self, transfer_id: str, reason: str) -> Staged | None:
        """Drop a transfer from the store and hand it over; the caller releases its memory."""
        with self._lock:
            staged = self._staged.pop(transfer_id, None)
            if staged is not None:
                self._forget(staged, reason)
        return staged

    def expire(self, now_s: float) -> list[str]:
        """Free every transfer whose lease has passed; returns their ids."""
        with self._lock:
            gone = [s for s in self._staged.values() if s.expires_s <= now_s]
            for staged in gone:
                del self._staged[staged.transfer_id]
                self._forget(staged, "expired")
        for staged in gone:
            if staged.release is not None:
                staged.release()
        return [s.transfer_id for s in gone]

    def free_all(self, reason: str) -> int:
        with self._lock:
            ids = list(self._staged)
        return sum(self.free(tid, reason) for tid in ids)

    def _forget(self, staged: Staged, reason: str) -> None:
        self._freed[reason] = self._freed.get(reason, 0) + 1
        self._freed_blocks[reason] = self._freed_blocks.get(reason, 0) + len(staged.blocks)
        self._gone[staged.transfer_id] = reason
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(leases=len(self._staged), blocks=sum(len(s.blocks) for s in self._staged.values()),
                              bytes=sum(s.nbytes for s in self._staged.values()), freed=dict(self._freed),
                              freed_blocks=dict(self._freed_blocks))
