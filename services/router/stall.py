"""Clients that stop reading. A front door's write to a client blocks once the client's socket
and the transport's buffers are full; a client that never reads again would hold its request,
and with it the scheduler's slot and the worker's KV, for as long as it keeps the connection.

Each streaming writer takes a WriteGuard and marks every write. One sweeper per router checks
the guards every second; a write blocked for longer than the timeout cancels the writer's task,
and the writer, seeing `stalled`, ends its request (which aborts it on the worker and completes
it at the scheduler) instead of treating the cancel as a shutdown. Per message this costs two
attribute stores and a clock read; no timer per write."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from services.common import metrics

log = logging.getLogger("hfx.router")


class WriteGuard:
    __slots__ = ("task", "since", "stalled", "label", "_clock", "_guards")

    def __init__(self, guards: set, clock: Callable[[], float], label: str) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a write guard is made in the task whose writes it watches")
        self.task = task
        self.since: float | None = None   # when the write in progress began; None: none in progress
        self.stalled = False
        self.label = label
        self._clock = clock
        self._guards = guards

    def writing(self) -> None:
        self.since = self._clock()

    def wrote(self) -> None:
        self.since = None

    def __enter__(self) -> WriteGuard:
        self._guards.add(self)
        return self

    def __exit__(self, *exc) -> None:
        self._guards.discard(self)


class StallWatch:
    def __init__(self, timeout_s: float, check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._check_every_s = min(check_every_s, timeout_s / 2)
        self._clock = clock
        self._guards: set[WriteGuard] = set()
        self._sweeper: asyncio.Task | None = None

    def guard(self, label: str) -> WriteGuard:
        """A guard for the calling task's writes; use it as a context manager."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever())
        return WriteGuard(self._guards, self._clock, label)

    def sweep(self, now_s: float) -> list[WriteGuard]:
        """Cancels the writers blocked for longer than the timeout; returns their guards."""
        stalled = [g for g in self._guards
                   if g.since is not None and not g.stalled and now_s - g.since > self.timeout_s]
        for guard in stalled:
            guard.stalled = True
            guard.task.cancel()
            metrics.ROUTER_CLIENT_STALLS.labels(door=guard.label).inc()
            log.warning("client stopped reading (%s): a write blocked for over %.0fs; ending its request",
                        guard.label, self.timeout_s)
        return stalled

    async def _sweep_forever(self) -> None:
        while self._guards:
            await asyncio.sleep(self._check_every_s)
            self.sweep(self._clock())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
