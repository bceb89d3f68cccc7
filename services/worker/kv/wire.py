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

from services.common.checksum import crc32  # noqa: F401 (re-exported: one CRC for every stream)
from services.worker.weights.wire import frame, parse_frame_body, parse_frame_length  # noqa: F401 (re-exported)

VERSION = 1


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
