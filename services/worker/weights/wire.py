"""The weight stream's wire format, the same on every byte transport.

    receiver -> donor   HELLO   {"version": 1, "identity": hex, "token": the cluster's internal token}
    donor -> receiver   ERROR   {"error": why}, then it closes (no token, or a wrong one)
    donor -> receiver   MANIFEST {"version": 1, "identity": hex, "tensors": n, "total_bytes": b}
                        then, n times: TENSOR {"name", "dtype", "shape", "nbytes", "crc32"} + nbytes raw bytes
                        then END {"end": true, "tensors": n}

Each header is a frame: a 4-byte big-endian length and that many bytes of JSON. Raw tensor bytes
follow their header unframed (their size is in it). The receiver checks every header against its
own checkpoint index (name known, dtype and shape equal, size consistent), every tensor's CRC32
over the bytes it received, the identity before the first tensor, and that END came after
exactly the tensors of its index, each once. Any failure raises a `TransferError` naming it.
CRC32 guards against corruption in transit or in the donor's memory, not against a malicious
donor (donors are peers inside one cluster).
"""

from __future__ import annotations

import json
import struct

VERSION = 1
MAX_FRAME_BYTES = 1 << 20


class TransferError(RuntimeError):
    """The stream cannot be used; the receiver falls back to storage. `kind` names the cause."""

    kind = "transfer"


class IdentityMismatch(TransferError):
    kind = "identity"


class IntegrityError(TransferError):
    kind = "integrity"


class Unauthorised(TransferError):
    kind = "unauthorised"


def check_manifest(manifest: dict, address: str) -> None:
    """A donor that refused the stream says why in place of its manifest."""
    if "error" in manifest:
        raise Unauthorised(f"donor {address} refused the stream: {manifest['error']}")


class DonorLost(TransferError):
    kind = "donor-lost"


class DonorTooSlow(TransferError):
    kind = "too-slow"


def frame(obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def parse_frame_length(head: bytes) -> int:
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME_BYTES:
        raise IntegrityError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    return size


def parse_frame_body(body: bytes) -> dict:
    try:
        obj = json.loads(body)
    except ValueError as err:
        raise IntegrityError(f"unreadable frame: {err}") from None
    if not isinstance(obj, dict):
        raise IntegrityError("frame is not a JSON object")
    return obj


def recv_exact(conn, n: int, lost: type[Exception] = ConnectionError) -> bytes:
    """Exactly n bytes from a socket; `lost` (with the reason) when the peer closes first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise lost("peer closed the stream mid-way")
        got += k
    return bytes(buf)
