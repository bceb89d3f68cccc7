"""The KV block stream's protocol, on any byte transport (frames as the weight stream's: a 4-byte
big-endian length and a JSON object; raw block bytes follow their header unframed).

    D -> P  PULL    {"op": "pull", "version": 1, "transfer_id": t, "from_block": k, "wait_s": w}
                    (P waits up to w for blocks staged a moment after their id was handed out)
    P -> D          {"ok": true, "num_tokens": n, "blocks": m, "layout": {...}}
                    or {"ok": false, "reason": "unknown-transfer", "error": "..."}
                    then for each block i >= k: {"i": i, "nbytes": b, "crc32": c} + b bytes
                    then {"end": true, "blocks": m - k}
    D -> P  ACK     {"op": "ack", "transfer_id": t, "ok": bool, "reason": "..."}   (P frees the lease)
    P -> D          {"freed": bool}
    any -> P        {"op": "release", "transfer_id": t} -> {"freed": bool}   (abort: free unread)
    any -> P        {"op": "stats"} -> {"leases": n, "blocks": b, "bytes": x, "freed": {...}}

D checks the layout against its own before the first block, each block's size and CRC32, and
that END came after exactly the blocks it asked for. Any failure is a `KvTransferError` whose
`kind` is its reason label: D then recomputes the prefill, it never loads what did not check out.
"""

from __future__ import annotations

import zlib

from services.worker.weights.wire import frame, parse_frame_body, parse_frame_length  # noqa: F401 (re-exported)

try:
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # an environment installed without it: same checksums, ~8x slower
    _crc32 = zlib.crc32

VERSION = 1


def crc32(data) -> int:
    """CRC32 (zlib's polynomial) with ISA-L: ~30 GB/s here against zlib's ~3.5, so checking every
    block does not halve the transfer's bandwidth. Both give the same value, so peers with and
    without ISA-L agree."""
    return _crc32(data)


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
