"""The staging arena: one shared-memory file per worker, its pages allocated once at start, that
the prefill side stages transfers into and a decode side on the same host maps once per peer.

Why: a fresh file per transfer cost a decode worker a kernel copy (or a page fault) per 4 KiB
page, ~5 GB/s here; mapping the arena once (MAP_POPULATE) makes a transfer a user-space copy of
the blocks at memcpy speed. Regions are handed out by the writer's `Allocator` and return to it
when their transfer's metadata is gone (shm.py: the server removes it on ack, release or lease
expiry); a region reused while a reader still copies it is caught by that reader's ACK (the lease
was no longer held) and its CRC32s. Transfers that do not fit go to a file of their own.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading

import numpy as np

NAME = "arena.kv"
ALIGN = 4096
DEFAULT_BYTES = 256 * 1024 * 1024
MAPPINGS_KEPT = 16  # readers keep this many peers' arenas mapped


def path(directory: str) -> str:
    return os.path.join(directory, NAME)


def create(directory: str, nbytes: int = DEFAULT_BYTES) -> str:
    """The arena file of `nbytes`, its pages allocated now (not at the first transfer)."""
    target = path(directory)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    finally:
        os.close(fd)
    return target


class Allocator:
    """First-fit regions of `capacity` bytes, each held under a key; pure bookkeeping."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity > 0 else []  # (offset, size), by offset
        self._held: dict[str, tuple[int, int]] = {}

    def reserve(self, key: str, nbytes: int) -> int | None:
        """The offset of a region of at least `nbytes` held for `key`; None when none is free."""
        if key in self._held:
            raise ValueError(f"region {key!r} is held already")
        size = -(-max(nbytes, 1) // ALIGN) * ALIGN
        for n, (offset, free) in enumerate(self._free):
            if free >= size:
                self._free[n:n + 1] = [(offset + size, free - size)] if free > size else []
                self._held[key] = (offset, size)
                return offset
        return None

    def free(self, key: str) -> bool:
        region = self._held.pop(key, None)
        if region is None:
            return False
        self._free.append(region)
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for offset, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == offset:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((offset, size))
        self._free = merged
        return True

    def held(self) -> list[str]:
        return list(self._held)

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self._free)


_lock = threading.Lock()
_maps: collections.OrderedDict[tuple[str, bool], tuple[int, mmap.mmap, np.ndarray]] = collections.OrderedDict()


def mapped(target: str, writable: bool = False) -> np.ndarray:
    """The arena at `target` as a uint8 array, mapped (page tables populated) once per process and
    kept while the file is the same one; read-only unless `writable`. Raises OSError when absent."""
    inode = os.stat(target).st_ino
    key = (target, writable)
    with _lock:
        entry = _maps.get(key)
        if entry is not None and entry[0] == inode:
            _maps.move_to_end(key)
            return entry[2]
        fd = os.open(target, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            region = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=prot)
        finally:
            os.close(fd)
        array = np.frombuffer(region, dtype=np.uint8)
        _maps[key] = (inode, region, array)  # a replaced mapping is unmapped when its last view goes
        while len(_maps) > MAPPINGS_KEPT:
            _maps.popitem(last=False)
        return array
