"""The KV block stream's protocol, on any byte transport (frames as the weight stream's: a 4-byte
big-endian length and a JSON object; raw block bytes follow their header unframed).

    D -> P  PULL    {"op": "pull", "version": 1, "transfer_id": t, "from_block": k, "wait_s": w}
                    (P waits up to w for blocks staged a moment after their id was handed out)
    P -> D          {"ok": true, "num_tokens": n, "blocks": m, "layout": {...}, "crc32": [c_k, ...]}
                    or {"ok": false, "reason": "unknown-transfer", "error": "..."}
                    then blocks k.. back to back, layout["block_bytes"] each (one stream, no
                    per-block frames: D receives them straight into its buffers in large reads)
                    then {"end": true, "blocks": m - k}
    D -> P  ACK     {"op": "ack", "transfer_id": t, "ok": bool, "reason": "..."}   (P frees the lease)
    P -> D          {"freed": bool}
    any -> P        {"op": "release", "transfer_id": t} -> {"freed": bool}   (abort: free unread)
    any -> P        {"op": "stats"} -> {"leases": n, "blocks": b, "bytes": x, "freed": {...}, "freed_blocks": {...}}

D checks the layout against its own before the first block, each block's CRC32, and that END
came after exactly the blocks it asked for; the ACK's answer must say P still held the lease (a
transfer freed meanwhile may have had its memory reused while D read it). A same-host pull
(samehost.py) reads no blocks from the stream: it copies them from P's shared memory, makes the
same check by looking for the transfer's metadata after the copy, and sends the ACK without
waiting on its answer. Any failure is a `KvTransferError` whose
`kind` is its reason label: D then recomputes the prefill, it never loads what did not check out.
"""

from __future__ import annotations

from services.common.checksum import crc32
from services.worker.weights.wire import frame, parse_frame_body, parse_frame_length  # noqa: F401 (re-exported)

VERSION = 2

# A TCP pull receives and checks blocks this many bytes at a time: the receive leaves them in the
# core's cache for their CRC32 pass (a same-host pull copies in pieces of its own, samehost.py).
CHUNK_BYTES = 1 << 20


def chunks(first: int, stop: int, block_bytes: int):
    """(first block, count) runs covering blocks first..stop-1, about CHUNK_BYTES each."""
    step = max(1, CHUNK_BYTES // max(1, block_bytes))
    for start in range(first, stop, step):
        yield start, min(step, stop - start)


def check(transfer_id: str, first: int, data, block_bytes: int, sums) -> None:
    """Raise Integrity unless each block of `data` (blocks first.. back to back) has its CRC32 in
    `sums` (indexed from `first`)."""
    view = memoryview(data).cast("B")
    for j in range(len(view) // block_bytes):
        check_block(transfer_id, first + j, crc32(view[j * block_bytes:(j + 1) * block_bytes]), sums[j])


def check_block(transfer_id: str, index: int, crc: int, staged) -> None:
    if crc != staged:
        raise Integrity(f"transfer {transfer_id}: block {index} CRC32 {crc:#010x} != staged {staged!r}")


class KvTransferError(RuntimeError):
    kind = "transfer"


class UnknownTransfer(KvTransferError):
    kind = "unknown-transfer"  # freed, expired, or never staged


class Integrity(KvTransferError):
    kind = "integrity"  # checksum, size, layout or framing


class PeerLost(KvTransferError):
    kind = "peer-lost"


class TooSlow(KvTransferError):
    kind = "deadline"


FAILURE_KINDS = (UnknownTransfer.kind, Integrity.kind, PeerLost.kind, TooSlow.kind)
