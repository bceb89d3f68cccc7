"""The same-host transport: D maps P's staged file (shared memory) and copies the blocks it
needs, checking each one's CRC32, instead of streaming them over a socket. P still holds the
lease and frees on D's ACK; a file that vanished (freed, expired) or is not on this host makes
D fall back to the TCP stream. Staged files are written once, so a mapping D holds stays valid
even when P unlinks the file meanwhile."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from services.worker.kv import tcp
from services.worker.kv.wire import Integrity, KvTransferError, TooSlow, UnknownTransfer, crc32


def pull(address: str, transfer_id: str, *, from_block: int, layout: dict, deadline_s: float,
         into: Callable[[int, int], memoryview]) -> tcp.PullResult:
    """As tcp.pull (same arguments, errors and result); reads the staged file when P is on this
    host, else streams over TCP. One connection carries the locate and the ACK."""
    started = time.monotonic()
    deadline = started + deadline_s
    conn = tcp.connect(address, deadline_s)
    with conn:
        tcp.send(conn, {"op": "locate", "transfer_id": transfer_id, "wait_s": round(deadline_s * 0.5, 3)}, deadline)
        reply = tcp.read_frame(conn, deadline)
        if not reply.get("ok"):
            if reply.get("reason") == UnknownTransfer.kind:
                raise UnknownTransfer(f"KV server {address}: {reply.get('error')}")
            return tcp.pull(address, transfer_id, from_block=from_block, layout=layout, deadline_s=deadline_s, into=into)
        try:
            fd = os.open(str(reply.get("path", "")), os.O_RDONLY)
        except OSError:  # not this host (or freed just now): stream it
            return tcp.pull(address, transfer_id, from_block=from_block, layout=layout,
                            deadline_s=deadline - time.monotonic(), into=into)
        result = tcp.PullResult(num_tokens=int(reply.get("num_tokens", 0)))
        try:
            _copy(fd, reply, transfer_id, from_block, layout, deadline, into, result)
        except KvTransferError as err:
            tcp.nack(address, transfer_id, err.kind)
            raise
        finally:
            os.close(fd)
        tcp.send(conn, {"op": "ack", "transfer_id": transfer_id, "ok": True}, deadline)
        result.acked = bool(tcp.read_frame(conn, deadline).get("freed"))
    result.ms = (time.monotonic() - started) * 1000.0
    return result


IOV_MAX = 512


def _copy(fd: int, reply: dict, tid: str, from_block: int, layout: dict, deadline: float, into, result) -> None:
    """Read the blocks straight into their destinations (one kernel copy from the page cache, no
    page faults on a mapping), then check each one's CRC32."""
    if reply.get("layout") != layout:
        raise Integrity(f"transfer {tid}: staged layout {reply.get('layout')}, this engine has {layout}")
    block_bytes = int(layout["block_bytes"])
    sums = reply.get("crc32") or []
    size = os.fstat(fd).st_size
    if size != len(sums) * block_bytes or not 0 <= from_block <= len(sums):
        raise Integrity(f"transfer {tid}: staged file of {size} bytes for {len(sums)} blocks of {block_bytes}")
    for first in range(from_block, len(sums), IOV_MAX):
        if time.monotonic() > deadline:
            raise TooSlow(f"transfer {tid}: passed its deadline after {result.blocks} blocks")
        ids = range(first, min(first + IOV_MAX, len(sums)))
        buffers = [into(i, block_bytes) for i in ids]
        got = os.preadv(fd, buffers, first * block_bytes)
        if got != len(buffers) * block_bytes:
            raise Integrity(f"transfer {tid}: read {got} bytes of blocks {ids.start}..{ids.stop - 1}")
        for i, buf in zip(ids, buffers):
            crc = crc32(buf)
            if crc != sums[i]:
                raise Integrity(f"transfer {tid}: block {i} CRC32 {crc:#010x} != staged {sums[i]:#010x}")
            result.blocks += 1
            result.bytes += block_bytes
