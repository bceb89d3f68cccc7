"""The one-host transport: the donor's weight files shared as memfds, mapped by the receiver.

When donor and receiver share a host (and a network namespace), the receiver connects to the
donor's Unix socket (abstract name derived from its TCP address) and gets, with the manifest, one
file descriptor per weight file (SCM_RIGHTS). It maps them copy-on-write and hands vLLM views into
the mapping: no bytes cross a socket, and vLLM's own copy into its parameters is the transfer. The
headers still come one per tensor with name, dtype, shape, CRC32 (plus file and offset), and the
receiver checks all of it over the mapped bytes exactly as over a stream (wire.py). A donor that
dies leaves the receiver's mapping valid (the memfd lives while mapped) but ends the header
stream: DonorLost, as on TCP. No socket there (another host, no memfds): ShmUnavailable, and the
caller uses TCP. A receiver that knows its donor ahead (a standby) can `attach` first: the files
are mapped and their pages faulted in then (premap.py), and the pull only checks and hands on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator

from services.common import internal_auth
from services.worker.weights import premap, wire
from services.worker.weights.checkpoint import TensorInfo
from services.worker.weights.source import SharedMemorySource
from services.worker.weights.tcp import (HELLO_TIMEOUT_S, ReceiveStats, ThreadedServer, _accept_tensor, _check_header,
                                         _read_frame)
from services.worker.weights.wire import DonorLost, DonorTooSlow, IdentityMismatch, IntegrityError

log = logging.getLogger("hfx.worker.weights")


class ShmUnavailable(DonorLost):
    """No shared-memory donor at this address from here; use the TCP stream (transport "auto"),
    or fall back to storage like any lost donor (transport "shm")."""

    kind = "no-shm"


def socket_name(address: str) -> bytes:
    """The abstract Unix socket name paired with a donor's TCP address."""
    return b"\0hfx-weights-" + address.encode()


class ShmWeightServer(ThreadedServer):
    def __init__(self, source: SharedMemorySource, tcp_address: str) -> None:
        if not source.fds:
            raise OSError("the source is not in shared memory")
        self.source = source
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(socket_name(tcp_address))
        sock.listen(8)
        super().__init__(sock, "weights-shm")

    def accept(self, conn: socket.socket, peer) -> None:
        self.spawn(self._serve_one, conn)

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(HELLO_TIMEOUT_S)
                _hello = _read_frame(conn)
                if not internal_auth.hello_allowed(_hello):
                    log.warning("shared-memory weight stream refused: %s", internal_auth.DENIED_HELLO)
                    conn.sendall(wire.frame({"error": internal_auth.DENIED_HELLO}))
                    return
                src = self.source
                manifest = wire.frame({"version": wire.VERSION, "identity": src.identity, "tensors": src.tensor_count,
                                       "total_bytes": src.total_bytes, "files": len(src.fds)})
                socket.send_fds(conn, [manifest], src.fds)
                if _hello.get("attach"):
                    return  # a receiver mapping the files ahead of its pull (premap.py): no headers
                frames = [wire.frame({"name": e.info.name, "dtype": e.info.dtype, "shape": list(e.info.shape),
                                      "nbytes": e.info.nbytes, "crc32": e.crc32,
                                      "file": src.file_index[e.info.file], "offset": e.info.begin})
                          for e in src.entries()]
                frames.append(wire.frame({"end": True, "tensors": len(frames)}))
                # One send for every header: the receiver then never waits for this thread to be
                # scheduled between two tensors (on a busy host that wait was up to 0.05 s a pull).
                conn.sendall(b"".join(frames))
        except Exception as err:
            log.warning("shared-memory weight stream ended early: %s", err)


def attach(address: str, identity: str, *, stall_timeout_s: float = 10.0, background: bool = True) -> dict:
    """Map the weight files of the donor at `address` now, ahead of a pull from it, and fault
    their pages in (premap.py; on a daemon thread unless not `background`). Raises
    ShmUnavailable (no shared-memory donor here), IdentityMismatch, or another TransferError;
    nothing is kept then. Returns the mapping's report (files, bytes, map_s, populate_s)."""
    conn = _connect(address, stall_timeout_s)
    try:
        with conn:
            manifest, fds = _handshake(conn, address, identity, attach=True)
            try:
                pre = premap.keep(address, identity, fds, background=background)
            finally:
                for fd in fds:
                    os.close(fd)
    except socket.timeout:
        raise DonorTooSlow(f"donor {address} sent nothing for {stall_timeout_s:.1f}s") from None
    except (ConnectionError, OSError) as err:
        raise DonorLost(f"donor {address} connection failed: {err}") from None
    return pre.report()


def receive(address: str, identity: str, index: dict[str, TensorInfo], *, stall_timeout_s: float = 10.0,
            deadline_s: float = 300.0, stats: ReceiveStats | None = None, **_: object
            ) -> Iterator[tuple[TensorInfo, memoryview]]:
    """As tcp.receive, but the bytes are views into the donor's shared pages (copy-on-write):
    through the mapping `attach` made ahead, when it is of the same files, else mapped here.
    Phases in stats.extra: handshake_s (hello to fds), map_s, premapped, populated."""
    stats = stats if stats is not None else ReceiveStats()
    t0 = time.monotonic()
    try:
        conn = _connect(address, stall_timeout_s)
        stats.connect_s = time.monotonic() - t0
        stats.extra["transport"] = "shm"
        deadline = t0 + deadline_s
        with conn, conn.makefile("rb") as rfile:
            t1 = time.monotonic()
            manifest, fds = _handshake(conn, address, identity)
            stats.donor_identity = str(manifest.get("identity", ""))
            t2 = time.monotonic()
            try:
                pre = premap.take(address, identity, [premap.file_key(fd) for fd in fds])
                stats.extra.update(premapped=pre is not None, populated=pre is not None and pre.done.is_set())
                maps = pre.maps if pre is not None else premap.map_files(fds)
            finally:
                for fd in fds:
                    os.close(fd)
            stats.extra.update(handshake_s=t2 - t1, map_s=time.monotonic() - t2)
            seen: set[str] = set()
            while True:
                if time.monotonic() > deadline:
                    raise DonorTooSlow(f"donor {address}: stream passed its deadline")
                header = _read_buffered_frame(rfile)
                if header.get("end"):
                    missing = sorted(set(index) - seen)
                    if missing or header.get("tensors") != len(seen):
                        raise IntegrityError(f"donor {address} ended after {len(seen)} of {len(index)} tensors "
                                             f"(missing e.g. {missing[:3]})")
                    stats.stream_s = time.monotonic() - t1
                    return
                info = _check_header(header, index, seen, address)
                k, offset = header.get("file"), header.get("offset")
                if not isinstance(k, int) or not 0 <= k < len(maps) or not isinstance(offset, int) \
                        or offset < 0 or offset + info.nbytes > len(maps[k]):
                    raise IntegrityError(f"tensor {info.name}: donor {address} points outside its shared files")
                view = memoryview(maps[k])[offset:offset + info.nbytes]
                _accept_tensor(info, view, header, address, seen, stats)
                yield info, view
    except socket.timeout:
        raise DonorTooSlow(f"donor {address} sent nothing for {stall_timeout_s:.1f}s") from None
    except (ConnectionError, OSError) as err:
        raise DonorLost(f"donor {address} connection failed: {err}") from None
    finally:
        premap.drop()  # used or not, a pull ends the mapping made ahead of it


def _connect(address: str, stall_timeout_s: float) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(stall_timeout_s)
        conn.connect(socket_name(address))
    except OSError as err:
        conn.close()
        raise ShmUnavailable(f"no shared-memory donor for {address} here: {err}") from None
    return conn


def _handshake(conn: socket.socket, address: str, identity: str, attach: bool = False) -> tuple[dict, list[int]]:
    """HELLO, then the manifest with the donor's fds (the caller closes them), checked: version
    and identity. On a failed check the fds are closed and the TransferError raised."""
    hello = {"version": wire.VERSION, "identity": identity, **internal_auth.hello_fields()}
    conn.sendall(wire.frame({**hello, "attach": True} if attach else hello))
    head, fds, _flags, _peer = socket.recv_fds(conn, 4, 16)
    try:
        if len(head) < 4:
            raise DonorLost(f"donor {address} closed before its manifest")
        manifest = wire.parse_frame_body(wire.recv_exact(conn, wire.parse_frame_length(head), DonorLost))
        wire.check_manifest(manifest, address)
        if manifest.get("version") != wire.VERSION:
            raise IntegrityError(f"donor {address} speaks wire version {manifest.get('version')}")
        if str(manifest.get("identity", "")) != identity:
            raise IdentityMismatch(f"donor {address} serves model {str(manifest.get('identity', ''))[:12]}, "
                                   f"this worker loads {identity[:12]}")
        if len(fds) != manifest.get("files"):
            raise IntegrityError(f"donor {address} sent {len(fds)} files, its manifest says {manifest.get('files')}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return manifest, fds


def _read_buffered_frame(rfile) -> dict:
    head = rfile.read(4)
    body = rfile.read(wire.parse_frame_length(head)) if len(head) == 4 else b""
    if len(head) < 4 or len(body) < wire.parse_frame_length(head):
        raise DonorLost("donor closed the stream mid-way")
    return wire.parse_frame_body(body)

