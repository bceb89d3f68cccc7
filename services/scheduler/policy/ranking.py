"""The HFX queue: least slack first, weighted by priority, kept incrementally across passes.

rank key = ttft_deadline_s - unloaded_prefill_s - (priority - 1) * priority_credit_s, FCFS
tie-break. Slack at time t is ttft_deadline_s - t - unloaded_prefill_s, so ordering by the key is
ordering by slack minus the priority credit, and the order never changes as time passes: a new
pass only inserts new arrivals instead of re-sorting the whole queue.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from services.common.domain import RequestSpec

if TYPE_CHECKING:
    from services.scheduler.policy.why import Miss


@dataclass
class Entry:
    spec: RequestSpec
    rank_key_s: float
    hopeless_at_s: float          # after this the first token cannot land before its deadline
    output_tokens: int
    unloaded_prefill_ms: float
    seq: int = 0
    best_effort: bool = False
    demoted_s: float = 0.0        # when it became best effort (its arrival if it was from the start)
    last_miss: Miss | None = None  # why it fitted nowhere at its last try (policy/why.py), for reasons

    def slack_ms(self, now_s: float) -> float:
        return (self.hopeless_at_s - now_s) * 1000.0

    def rank_slack_ms(self, now_s: float) -> float:
        """Slack minus its priority credit: what the heap orders by (rank_key_s - now)."""
        return (self.rank_key_s - now_s) * 1000.0


@dataclass
class RankedQueue:
    """Mirror of the caller's waiting list. Assumes the caller appends arrivals at the end and
    removes what the policy settled; anything else is detected by count and triggers a resync."""

    known: dict[str, Entry] = field(default_factory=dict)
    best_effort: deque = field(default_factory=deque)
    _by_rank: list = field(default_factory=list)
    _by_deadline: list = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    resyncs: int = 0

    def sync(self, waiting: Sequence[RequestSpec], make: Callable[[RequestSpec], Entry]) -> None:
        fresh: list[RequestSpec] = []
        for spec in reversed(waiting):
            if spec.request_id in self.known:
                break
            fresh.append(spec)
        if len(waiting) != len(self.known) + len(fresh):
            self._resync(waiting, make)
            return
        for spec in reversed(fresh):
            self._insert(make(spec))

    def _resync(self, waiting: Sequence[RequestSpec], make: Callable[[RequestSpec], Entry]) -> None:
        self.resyncs += 1
        old = self.known
        self.known, self._by_rank, self._by_deadline = {}, [], []
        self.best_effort = deque()
        for spec in waiting:
            prev = old.get(spec.request_id)
            entry = prev if prev is not None and prev.spec == spec else make(spec)
            entry.seq = next(self._seq)
            self.known[spec.request_id] = entry
            if entry.best_effort:
                self.best_effort.append(entry)
            else:
                self._by_rank.append((entry.rank_key_s, entry.spec.arrival_s, entry.seq, entry))
                self._by_deadline.append((entry.hopeless_at_s, entry.seq, entry))
        heapq.heapify(self._by_rank)
        heapq.heapify(self._by_deadline)

    def _insert(self, entry: Entry) -> None:
        entry.seq = next(self._seq)
        self.known[entry.spec.request_id] = entry
        if entry.best_effort:
            self.best_effort.append(entry)
            return
        heapq.heappush(self._by_rank, (entry.rank_key_s, entry.spec.arrival_s, entry.seq, entry))
        heapq.heappush(self._by_deadline, (entry.hopeless_at_s, entry.seq, entry))

    def _live(self, entry: Entry) -> bool:
        return not entry.best_effort and self.known.get(entry.spec.request_id) is entry

    def pop_hopeless(self, now_s: float) -> Entry | None:
        heap = self._by_deadline
        while heap and (not self._live(heap[0][2]) or heap[0][0] < now_s):
            _, _, entry = heapq.heappop(heap)
            if self._live(entry):
                return entry
        return None

    def pop_due(self, before_s: float) -> Entry | None:
        """The live entry that becomes hopeless first, if that is before `before_s` (removed from
        the deadline heap; `push_due` puts it back when it stays queued)."""
        heap = self._by_deadline
        while heap and not self._live(heap[0][2]):
            heapq.heappop(heap)
        if not heap or heap[0][0] >= before_s:
            return None
        return heapq.heappop(heap)[2]

    def push_due(self, entry: Entry) -> None:
        heapq.heappush(self._by_deadline, (entry.hopeless_at_s, entry.seq, entry))

    def pop_ranked(self) -> Entry | None:
        heap = self._by_rank
        while heap:
            entry = heapq.heappop(heap)[3]
            if self._live(entry):
                return entry
        return None

    def requeue(self, entry: Entry) -> None:
        """Put a settled entry back, as if it had just arrived (keeps its rank key and deadline)."""
        self._insert(entry)

    def push_back(self, entry: Entry) -> None:
        heapq.heappush(self._by_rank, (entry.rank_key_s, entry.spec.arrival_s, entry.seq, entry))

    def demote(self, entry: Entry, now_s: float) -> None:
        entry.best_effort = True
        entry.demoted_s = now_s
        self.best_effort.append(entry)

    def pop_expired_best_effort(self, before_s: float) -> Entry | None:
        """The oldest best-effort entry demoted at or before `before_s`, removed from the queue (FIFO by
        demotion time, so this stops at the first one still within its wait limit)."""
        entry = self.next_best_effort()
        if entry is None or entry.demoted_s > before_s:
            return None
        self.best_effort.popleft()
        self.settle(entry)
        return entry

    def settle(self, entry: Entry) -> None:
        """The policy decided this request; the caller removes it from `waiting`."""
        self.known.pop(entry.spec.request_id, None)

    def next_best_effort(self) -> Entry | None:
        while self.best_effort:
            entry = self.best_effort[0]
            if self.known.get(entry.spec.request_id) is entry:
                return entry
            self.best_effort.popleft()
        return None
