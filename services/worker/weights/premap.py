"""A donor's shared weight files mapped into this process ahead of a pull, their pages faulted in
off the pull's path.

Why: this kernel has shmem huge pages off (4 KiB pages), and faulting in a donor's memfd pages
costs ~0.07 s per GiB, more than a memcpy of them (~0.055 s at 19 GB/s; BENCHMARKS.md, issue
12). A receiver that knows its donor before the pull (a standby, told by the scaler) maps the
donor's memfds then (`shm.attach`) and populates the mappings on a background thread with
madvise(MADV_POPULATE_READ): read faults only, so the private mapping shares the donor's pages
and costs page tables (~2 MiB per GiB), not a copy. At pull time the receiver gets the donor's
fds again with the stream's headers; where they are the same files (device, inode, size) it
reads through the populated mapping, else it maps them afresh. Every check of the stream stays
as it was: the mapping only changes when the pages are faulted.

One mapping per process (an engine pulls its weights once): a new attach replaces it, and the
pull drops it whatever its outcome, so a dead donor's memory is not pinned past the pull.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading
import time
from dataclasses import dataclass, field

MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and the pages are touched instead
CHUNK = 32 << 20         # populate this many bytes per madvise call, so drop() stops it soon
PAGE = mmap.PAGESIZE

FileKey = tuple[int, int, int]  # (st_dev, st_ino, st_size): the same memfd on both connections

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def file_key(fd: int) -> FileKey:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size)


def map_files(fds: list[int]) -> list[mmap.mmap]:
    """Each fd mapped whole, copy-on-write (vLLM's tensors over it must be writable; nothing writes)."""
    return [mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            for fd in fds]


@dataclass
class Premapped:
    address: str
    identity: str
    keys: list[FileKey]
    maps: list[mmap.mmap]
    map_s: float
    populate_s: float | None = None    # set when every page is in (None: still populating, or stopped)
    method: str = ""                   # "madvise" or "touch"
    done: threading.Event = field(default_factory=threading.Event)
    stopped: bool = False

    @property
    def nbytes(self) -> int:
        return sum(len(m) for m in self.maps)

    def report(self) -> dict:
        return {"address": self.address, "files": len(self.maps), "bytes": self.nbytes, "map_s": self.map_s,
                "populate_s": self.populate_s, "populated": self.done.is_set() and not self.stopped,
                "method": self.method}


_current: Premapped | None = None
_lock = threading.Lock()


def keep(address: str, identity: str, fds: list[int], *, background: bool = True) -> Premapped:
    """Map `fds` (a donor's weight files, already checked to be model `identity`), keep the
    mapping for the next pull from `address`, and fault its pages in: on a daemon thread, or
    here when not `background`. Replaces (and stops) any earlier one. The fds stay the caller's."""
    t0 = time.monotonic()
    keys = [file_key(fd) for fd in fds]
    pre = Premapped(address, identity, keys, map_files(fds), 0.0)
    pre.map_s = time.monotonic() - t0
    global _current
    with _lock:
        old, _current = _current, pre
    if old is not None:
        old.stopped = True
    if background:
        threading.Thread(target=_populate, args=(pre,), name="weights-premap", daemon=True).start()
    else:
        _populate(pre)
    return pre


def take(address: str, identity: str, keys: list[FileKey]) -> Premapped | None:
    """The kept mapping, if it is of these very files from this donor and model; else None."""
    with _lock:
        pre = _current
    if pre is None or pre.address != address or pre.identity != identity or pre.keys != keys:
        return None
    return pre


def current() -> Premapped | None:
    return _current


def drop() -> None:
    """Forget the kept mapping (views already handed out keep their pages until released)."""
    global _current
    with _lock:
        old, _current = _current, None
    if old is not None:
        old.stopped = True


def _populate(pre: Premapped) -> None:
    t0 = time.monotonic()
    pre.method = "madvise"
    try:
        for m in pre.maps:
            if not _populate_one(pre, m):
                return
        pre.populate_s = time.monotonic() - t0
    finally:
        pre.done.set()


def _populate_one(pre: Premapped, m: mmap.mmap) -> bool:
    """Fault in every page of `m` for reading, a chunk at a time (ctypes releases the GIL in the
    call). False when stopped part-way."""
    anchor = ctypes.c_char.from_buffer(m)  # only to learn the address; released below
    base = ctypes.addressof(anchor)
    del anchor
    for off in range(0, len(m), CHUNK):
        if pre.stopped:
            return False
        n = min(CHUNK, len(m) - off)
        if pre.method == "madvise" and _libc.madvise(base + off, n, MADV_POPULATE_READ) != 0:
            pre.method = "touch"  # a kernel without MADV_POPULATE_READ: read one byte per page
        if pre.method == "touch":
            for p in range(off, off + n, PAGE):
                m[p]
    return True
