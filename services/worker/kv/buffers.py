"""Receive buffers for KV pulls, kept between pulls: a fresh buffer costs a page fault per 4 KiB
on its first touch (for 64 MiB, more than the copy itself); a kept one is faulted in already."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np

KEPT = 4  # buffers kept for reuse; pulls running at once beyond this get fresh ones


class BufferPool:
    def __init__(self, kept: int = KEPT) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._kept = kept

    @contextlib.contextmanager
    def take(self, nbytes: int) -> Iterator[np.ndarray]:
        """A uint8 array of exactly nbytes (a view of a kept buffer when one is big enough)."""
        with self._lock:  # by position: tensors compare elementwise, so list.remove would not do
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes)) if fits else None
        if buf is None:
            buf = np.empty(nbytes, dtype=np.uint8)
        try:
            yield buf[:nbytes]
        finally:
            with self._lock:
                self._free.append(buf)
                self._free.sort(key=lambda b: b.nbytes, reverse=True)
                del self._free[self._kept:]
