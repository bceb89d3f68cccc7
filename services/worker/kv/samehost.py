"""The same-host transport: D maps P's staged file (shared memory) and copies the blocks it
needs, checking each one's CRC32, instead of streaming them over a socket. P still holds the
lease and frees on D's ACK; a file that vanished (freed, expired) or is not on this host makes
D fall back to the TCP stream. Staged files are written once, so a mapping D holds stays valid
even when P unlinks the file meanwhile."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

from services.worker.kv import tcp
from services.worker.kv.wire import Integrity, KvTransferError, TooSlow, UnknownTransfer, crc32


def pull(address: str, transfer_id: str, *, from_block: int, layout: dict, deadline_s: float,
         into: Callable[[int, int], memoryview]) -> tcp.PullResult:
    """As tcp.pull (same arguments, errors and result); maps the staged file when P is on this
    host, else streams over TCP."""
    started = time.monotonic()
    reply = tcp.request(address, {"op": "locate", "transfer_id": transfer_id, "wait_s": round(deadline_s * 0.5, 3)},
                        timeout_s=deadline_s)
    if not reply.get("ok"):
        if reply.get("reason") == UnknownTransfer.kind:
            raise UnknownTransfer(f"KV server {address}: {reply.get('error')}")
        return tcp.pull(address, transfer_id, from_block=from_block, layout=layout, deadline_s=deadline_s, into=into)
    try:
        fd = os.open(str(reply.get("path", "")), os.O_RDONLY)
    except OSError:  # not this host (or freed just now): stream it
        left = deadline_s - (time.monotonic() - started)
        return tcp.pull(address, transfer_id, from_block=from_block, layout=layout, deadline_s=left, into=into)
    result = tcp.PullResult(num_tokens=int(reply.get("num_tokens", 0)))
    try:
        _copy(fd, reply, transfer_id, from_block, layout, started + deadline_s, into, result)
    except KvTransferError as err:
        tcp.nack(address, transfer_id, err.kind)
        raise
    finally:
        os.close(fd)
    result.acked = bool(tcp.request(address, {"op": "ack", "transfer_id": transfer_id, "ok": True}).get("freed"))
    result.ms = (time.monotonic() - started) * 1000.0
    return result


def _copy(fd: int, reply: dict, tid: str, from_block: int, layout: dict, deadline: float, into, result) -> None:
    if reply.get("layout") != layout:
        raise Integrity(f"transfer {tid}: staged layout {reply.get('layout')}, this engine has {layout}")
    block_bytes = int(layout["block_bytes"])
    sums = reply.get("crc32") or []
    size = os.fstat(fd).st_size
    if size != len(sums) * block_bytes or not 0 <= from_block <= len(sums):
        raise Integrity(f"transfer {tid}: staged file of {size} bytes for {len(sums)} blocks of {block_bytes}")
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        view = memoryview(mapped)
        try:
            for i in range(from_block, len(sums)):
                if time.monotonic() > deadline:
                    raise TooSlow(f"transfer {tid}: passed its deadline after {result.blocks} blocks")
                dst = into(i, block_bytes)
                dst[:] = view[i * block_bytes:(i + 1) * block_bytes]
                if crc32(dst) != sums[i]:
                    raise Integrity(f"transfer {tid}: block {i} CRC32 {crc32(dst):#010x} != staged {sums[i]:#010x}")
                result.blocks += 1
                result.bytes += block_bytes
        finally:
            view.release()
