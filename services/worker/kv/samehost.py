"""The same-host transport: D copies the blocks it needs straight out of P's shared memory,
checking each one's CRC32, instead of streaming them over a socket. P's blocks are in its arena
(arena.py, mapped here once per P, so a transfer is a user-space copy at memcpy speed) or, when
they did not fit there, in a file of their own (mapped for the one pull). P still holds the lease
and frees on D's ACK. A transfer that is not on this host makes D stream it over TCP.

Whether the copy is good is decided here, not by the ACK's answer: once every block checked out,
D looks whether the transfer's metadata is still in P's folder. P removes it when it frees the
transfer (ACK, release, lease expiry), and P's stager hands a region out again only after its
transfer's metadata is gone (shm.ArenaStager.region), so metadata still there after the copy
means nothing was written over the blocks while D copied them; metadata gone means they may have
been, and the pull fails. The ACK then goes off the pull's path (a thread per P, on a kept
connection): a decode step does not wait for P's round trip (0.3-5 ms here, the largest part of
a 16 MiB pull on a busy host). An ACK that is lost leaves the blocks to the lease."""

from __future__ import annotations

import logging
import mmap
import os
import queue
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from services.worker.kv import arena, fused, shm, tcp, wire
from services.worker.kv.wire import Integrity, KvTransferError, PeerLost, TooSlow, UnknownTransfer

log = logging.getLogger("hfx.worker.kv")

# P's staging folder by P's address, learnt from its first locate answer: later pulls read the
# transfer's metadata there themselves, so a pull waits on no round trip to P (the ACK goes after it).
_folders: dict[str, str] = {}
# One idle connection per P kept for the next pull's ACK (no connect, no new server thread),
# reused while younger than the server's idle timeout allows.
_idle: dict[str, tuple[float, socket.socket]] = {}
_idle_lock = threading.Lock()
IDLE_REUSE_S = tcp.IDLE_TIMEOUT_S / 3
ACK_TIMEOUT_S = 2.0  # an ACK P does not answer within this is left to the lease


def pull(address: str, transfer_id: str, *, from_block: int, layout: dict, deadline_s: float,
         into: Callable[[int, int], memoryview]) -> tcp.PullResult:
    """As tcp.pull (same arguments, errors and result); copies from P's shared memory when P is
    on this host, else streams over TCP."""
    started = time.monotonic()
    deadline = started + deadline_s
    folder = _folders.get(address)
    reply = shm.read_location(folder, transfer_id) if folder else None
    if reply is None:  # P not met yet, or the transfer not staged yet (P waits for it), or gone
        reply = tcp.request(address, {"op": "locate", "transfer_id": transfer_id,
                                      "wait_s": round(deadline_s * 0.5, 3)}, timeout_s=deadline_s)
        if not reply.get("ok"):
            if reply.get("reason") == UnknownTransfer.kind:
                raise UnknownTransfer(f"KV server {address}: {reply.get('error')}")
            return tcp.pull(address, transfer_id, from_block=from_block, layout=layout, deadline_s=deadline_s, into=into)
    result = tcp.PullResult(num_tokens=int(reply.get("num_tokens", 0)))
    try:
        copied = _copy(reply, transfer_id, from_block, layout, deadline, into, result)
    except KvTransferError as err:
        tcp.nack(address, transfer_id, err.kind)
        raise
    if not copied:  # not this host (or freed just now): stream it
        return tcp.pull(address, transfer_id, from_block=from_block, layout=layout,
                        deadline_s=deadline - time.monotonic(), into=into)
    folder = os.path.dirname(str(reply["path"]))
    _folders[address] = folder
    if not shm.still_staged(folder, transfer_id):
        raise UnknownTransfer(f"transfer {transfer_id}: P no longer held it after the copy (lease expired or "
                              f"released while it was read)")
    _ackers.send(address, transfer_id)
    result.acked = True
    result.ms = (time.monotonic() - started) * 1000.0
    return result


class _Ackers:
    """One thread per P sending this process's ACKs to it in order, off the pulls' path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue] = {}

    def send(self, address: str, transfer_id: str) -> None:
        with self._lock:
            pending = self._queues.get(address)
            if pending is None:
                pending = self._queues[address] = queue.SimpleQueue()
                threading.Thread(target=self._run, args=(address, pending), name=f"kv-ack-{address}",
                                 daemon=True).start()
        pending.put(transfer_id)

    @staticmethod
    def _run(address: str, pending: queue.SimpleQueue) -> None:
        while True:
            transfer_id = pending.get()
            try:
                _ack(address, transfer_id, time.monotonic() + ACK_TIMEOUT_S, tcp.PullResult())
            except KvTransferError as err:  # the copy was checked already; P's lease frees the blocks
                log.info("KV ACK of %s to %s: %s", transfer_id, address, err)


_ackers = _Ackers()


def _ack(address: str, transfer_id: str, deadline: float, result: tcp.PullResult) -> None:
    """tcp.ack on a kept connection to P, or a fresh one when none is kept or the kept one died
    (P closed it, or restarted: an ACK that never arrived is sent again; one that arrived and lost
    its answer finds the lease gone, and the pull fails, safely)."""
    with _idle_lock:
        since, conn = _idle.pop(address, (0.0, None))
    if conn is not None and time.monotonic() - since > IDLE_REUSE_S:
        conn.close()
        conn = None
    if conn is not None:
        try:
            tcp.ack(conn, transfer_id, deadline, result)
            _keep(address, conn)
            return
        except PeerLost:
            conn.close()
    conn = tcp.connect(address, deadline - time.monotonic())
    tcp.ack(conn, transfer_id, deadline, result)
    _keep(address, conn)


def _keep(address: str, conn: socket.socket) -> None:
    with _idle_lock:
        old = _idle.pop(address, None)
        _idle[address] = (time.monotonic(), conn)
    if old is not None:
        old[1].close()


# Without the one-pass copy (fused.py), a block is copied and checked in pieces of at most this
# many bytes: a piece just copied is still in the core's L2 (1 MiB here, shared by the source's and
# the destination's lines) for its CRC32 pass. In one process here, 16 MiB from the arena: copy +
# CRC32 in 256 KiB pieces ran at 96-103% of a plain memcpy, in 1 MiB pieces at 78-82%.
PIECE_BYTES = 256 * 1024
# The one-pass copy moves at most this much per call: it holds the GIL while it runs (as the
# piecewise copy does per piece), ~1 ms per 16 MiB here, and the deadline is checked between calls.
RUN_BYTES = 16 << 20


def _copy(reply: dict, tid: str, from_block: int, layout: dict, deadline: float, into, result) -> bool:
    """Copy and check blocks from_block.. from P's shared memory; False when it is not on this host."""
    if reply.get("layout") != layout:
        raise Integrity(f"transfer {tid}: staged layout {reply.get('layout')}, this engine has {layout}")
    block_bytes = int(layout["block_bytes"])
    sums = reply.get("crc32") or []
    if not 0 <= from_block <= len(sums):
        raise Integrity(f"transfer {tid}: from_block {from_block} of {len(sums)} blocks")
    path, offset, nbytes = str(reply.get("path", "")), int(reply.get("offset", 0)), len(sums) * block_bytes
    mapped = None
    source: memoryview | mmap.mmap | bytes
    try:
        if reply.get("arena"):
            source = arena.mapped(path).data   # the array's own buffer, no copy
            if offset < 0 or offset + nbytes > len(source):
                raise Integrity(f"transfer {tid}: {len(sums)} blocks at {offset} past the arena's {len(source)} bytes")
        else:  # a file of its own (P's arena was full): mapped for this pull only
            mapped = _map_file(path, nbytes, tid)
            source, offset = (mapped if mapped is not None else b""), 0
    except OSError:
        return False
    try:
        if from_block < len(sums):  # one destination for the whole run, sliced below (no allocation per piece)
            # released on the way out, even past an exception whose frames still refer to it (the
            # file's mapping closes below)
            with memoryview(source)[offset + from_block * block_bytes:offset + nbytes] as src:
                _copy_blocks(memoryview(into(from_block, len(sums) - from_block)).cast("B"), src, block_bytes,
                             sums[from_block:], tid, from_block, deadline)
        result.blocks += len(sums) - from_block
        result.bytes += (len(sums) - from_block) * block_bytes
    finally:
        if mapped is not None:
            mapped.close()
    return True


def _copy_blocks(dst: memoryview, src: memoryview, block_bytes: int, sums: list, tid: str, first: int,
                 deadline: float) -> None:
    """src into dst, and each block's CRC32 over what landed in dst checked against `sums`: in one
    pass (fused.py) in runs of at most RUN_BYTES, else a copy and a CRC32 pass piece by piece."""
    copier = fused.copier() if fused.usable(block_bytes) else None
    if copier is None:
        _copy_blocks_in_pieces(dst, src, block_bytes, sums, tid, first, deadline)
        return
    failed = _copy_runs(copier, dst, src, block_bytes, sums, deadline)
    if failed is not None:  # raised here, not where the arrays over dst and src live (see _copy)
        j, crc = failed
        if crc is None:
            raise TooSlow(f"transfer {tid}: passed its deadline after {j} blocks")
        wire.check_block(tid, first + j, crc, sums[j])


def _copy_runs(copier: fused.Copier, dst: memoryview, src: memoryview, block_bytes: int, sums: list,
               deadline: float) -> tuple[int, int | None] | None:
    """None when every block came over with its CRC32; else (block, its CRC32), or (block, None)
    when the deadline passed before it."""
    per_run = max(1, RUN_BYTES // block_bytes)
    out = np.empty(min(per_run, len(sums)), dtype=np.uint32)
    to, source = np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8)
    for j in range(0, len(sums), per_run):
        if time.monotonic() > deadline:
            return j, None
        k = min(per_run, len(sums) - j)
        copier(to[j * block_bytes:(j + k) * block_bytes], source[j * block_bytes:(j + k) * block_bytes], block_bytes, out)
        for i, (crc, staged) in enumerate(zip(out[:k].tolist(), sums[j:j + k])):
            if crc != staged:
                return j + i, crc
    return None


def _copy_blocks_in_pieces(dst: memoryview, src: memoryview, block_bytes: int, sums: list, tid: str, first: int,
                           deadline: float) -> None:
    """The two-pass copy: lean on purpose, each piece's copy evicts this loop's own state from the
    core's caches."""
    crc32 = wire.crc32
    step = -(-block_bytes // -(-block_bytes // PIECE_BYTES))  # equal pieces of at most PIECE_BYTES
    for j, staged in enumerate(sums):
        if time.monotonic() > deadline:
            raise TooSlow(f"transfer {tid}: passed its deadline after {j} blocks")
        crc, end = 0, (j + 1) * block_bytes
        for at in range(j * block_bytes, end, step):
            piece = dst[at:min(at + step, end)]
            piece[:] = src[at:at + len(piece)]  # under the GIL: no other thread pauses a pull mid-copy
            crc = crc32(piece, crc)
        if crc != staged:
            wire.check_block(tid, first + j, crc, staged)


def _map_file(path: str, nbytes: int, tid: str) -> mmap.mmap | None:
    """The staged file, mapped (None when it holds no blocks); OSError when it is not here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != nbytes:
            raise Integrity(f"transfer {tid}: staged file of {os.fstat(fd).st_size} bytes, not {nbytes}")
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ) if nbytes else None
    finally:
        os.close(fd)
