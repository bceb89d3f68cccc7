"""The KV transport over TCP (loopback or between hosts): P's transfer server, D's pull client.

The Transport seam is the pair `KvServer` (serves a StagingStore at an address) and `pull`
(address, transfer id -> checked blocks written where the caller says). An RDMA / NCCL / HCCL
transport keeps the protocol's lease, ack and checksum rules (wire.py) and replaces the bytes'
path: the staged blocks registered with the NIC or device, D reading them one-sided, the same
ACK freeing the lease.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common import internal_auth
from services.worker.kv import shm, wire
from services.worker.kv.store import Staged, StagingStore
from services.worker.kv.wire import Integrity, KvTransferError, PeerLost, TooSlow, UnknownTransfer
from services.worker.weights.tcp import ThreadedServer

log = logging.getLogger("hfx.worker.kv")

IDLE_TIMEOUT_S = 30.0      # a connection silent this long between requests is closed
SEND_TIMEOUT_S = 10.0      # a reader that takes nothing for this long is dropped
REAP_INTERVAL_S = 0.2
STAGE_WAIT_S = 2.0         # a release may arrive just before its blocks are staged: wait this long for them
MAX_STAGE_WAIT_S = 30.0    # a pull waits for its blocks as long as D's deadline allows, at most this


class KvServer(ThreadedServer):
    """Serves the transfers staged in `staging_dir` (shm.py) through the store; frees a transfer
    on ack, release or lease expiry. Runs in the worker service's process, beside the engine."""

    def __init__(self, store: StagingStore, staging_dir: str, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(socket.create_server((host, port), reuse_port=False), "kv")
        self.store = store
        self.staging_dir = staging_dir
        self.clock = clock
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self.pulls = PullLog()  # this engine's own pulls as D, reported with the store's stats
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="kv-lease-reaper", daemon=True)

    def start(self):
        self._reaper.start()
        return super().start()

    def close(self) -> None:
        self._stop.set()
        super().close()
        self.store.free_all("shutdown")

    def _reap(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            for tid in shm.complete_ids(self.staging_dir):
                self._adopt(tid)  # under its lease from now, read or not
            for tid in self.store.expire(self.clock()):
                log.warning("KV transfer %s: lease expired unread, blocks freed", tid)

    def _adopt(self, tid: str) -> bool:
        if self.store.knows(tid):
            return True
        staged = shm.load(self.staging_dir, tid)
        if staged is None:
            return False
        try:
            self.store.stage(staged)
        except ValueError:  # adopted meanwhile by another thread
            staged.release = None
        return True

    def release(self, tid: str) -> bool:
        """Free a transfer nobody will read (an abort), staged already or about to be."""
        self.lookup(tid, STAGE_WAIT_S)
        return self.store.free(tid, "released")

    def lookup(self, tid: str, wait_s: float) -> tuple[Staged | None, str]:
        """The staged transfer, waiting up to `wait_s` for one not staged yet."""
        give_up = time.monotonic() + wait_s
        while True:
            staged, why = self.store.get(tid, self.clock())
            if staged is not None or why != "unknown":
                return staged, why
            if not self._adopt(tid) and time.monotonic() >= give_up:
                return None, why
            if not self.store.knows(tid):
                time.sleep(0.005)

    def accept(self, conn: socket.socket, peer) -> None:
        self.spawn(self._serve, conn, peer)

    def _serve(self, conn: socket.socket, peer) -> None:
        try:
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    conn.settimeout(IDLE_TIMEOUT_S)
                    try:
                        request = read_frame(conn, time.monotonic() + IDLE_TIMEOUT_S)
                    except PeerLost:
                        return  # the client closed between requests
                    conn.settimeout(SEND_TIMEOUT_S)
                    if not internal_auth.hello_allowed(request):   # a raw socket: no gRPC interceptor here
                        log.warning("KV request from %s refused: %s", peer, internal_auth.DENIED_HELLO)
                        conn.sendall(wire.frame({"ok": False, "reason": "unauthorised",
                                                 "error": internal_auth.DENIED_HELLO}))
                        return
                    if request.get("op") == "ack":  # answer first: D need not wait for the unmapping
                        self._adopt(str(request.get("transfer_id", "")))  # read before the reaper saw it
                        staged = self.store.take(str(request.get("transfer_id", "")), _ack_reason(request))
                        conn.sendall(wire.frame({"freed": staged is not None}))
                        if staged is not None and staged.release is not None:
                            staged.release()
                        continue
                    conn.sendall(wire.frame(self.handle(request, conn)))
        except Exception as err:  # a reader that went away must not take the server down
            log.info("KV connection from %s ended: %s", peer, err)

    def handle(self, request: dict, conn: socket.socket) -> dict:
        op, tid = request.get("op"), str(request.get("transfer_id", ""))
        if op == "pull":
            wait_s = min(MAX_STAGE_WAIT_S, max(0.0, float(request.get("wait_s", STAGE_WAIT_S))))
            return self._send(conn, tid, int(request.get("from_block", 0)), wait_s)
        if op == "locate":  # a reader on this host maps the staged file instead of streaming it
            wait_s = min(MAX_STAGE_WAIT_S, max(0.0, float(request.get("wait_s", STAGE_WAIT_S))))
            staged, why = self.lookup(tid, wait_s)
            if staged is None:
                return {"ok": False, "reason": UnknownTransfer.kind, "error": f"transfer {tid!r} is not staged here ({why})"}
            return shm.location(staged)
        if op == "ack":
            return {"freed": self.store.free(tid, _ack_reason(request))}
        if op == "release":
            return {"freed": self.release(tid)}
        if op == "pulled":  # this engine's connector reporting one of its pulls
            self.pulls.record(str(request.get("outcome")), int(request.get("bytes", 0)), float(request.get("ms", 0.0)),
                              transfer_id=tid, blocks=int(request.get("blocks", 0)),
                              start_unix_s=float(request.get("start_unix_s", 0.0)),
                              end_unix_s=float(request.get("end_unix_s", 0.0)))
            return {}
        if op == "stats":
            s = self.store.stats()
            return {"leases": s.leases, "blocks": s.blocks, "bytes": s.bytes, "freed": s.freed,
                    "freed_blocks": s.freed_blocks, "pulls": self.pulls.snapshot()}
        return {"ok": False, "reason": "bad-request", "error": f"unknown op {op!r}"}

    def _send(self, conn: socket.socket, tid: str, from_block: int, wait_s: float) -> dict:
        staged, why = self.lookup(tid, wait_s)
        if staged is None:
            return {"ok": False, "reason": UnknownTransfer.kind, "error": f"transfer {tid!r} is not staged here ({why})"}
        if not 0 <= from_block <= len(staged.blocks):
            return {"ok": False, "reason": "bad-request", "error": f"from_block {from_block} out of range"}
        conn.sendall(wire.frame({"ok": True, "num_tokens": staged.num_tokens, "blocks": len(staged.blocks),
                                 "layout": staged.layout, "crc32": list(staged.crc32[from_block:])}))
        send_buffers(conn, staged.blocks[from_block:])
        return {"end": True, "blocks": len(staged.blocks) - from_block}


class PullLog:
    """Outcomes of this engine's pulls (as D): counts by outcome, bytes and ms of the good ones,
    and each pull by transfer id until the decode leg's span takes it (`take`; only the newest
    KEPT_PULLS are kept, so records nobody takes do not pile up)."""

    KEPT_PULLS = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: dict[str, int] = {}
        self._bytes = 0
        self._ms: list[float] = []
        self._by_transfer: dict[str, dict] = {}

    def record(self, outcome: str, nbytes: int = 0, ms: float = 0.0, *, transfer_id: str = "", blocks: int = 0,
               start_unix_s: float = 0.0, end_unix_s: float = 0.0) -> None:
        with self._lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            if outcome == "ok":
                self._bytes += nbytes
                self._ms.append(ms)
                del self._ms[:-256]
            if transfer_id:
                self._by_transfer[transfer_id] = {"transfer_id": transfer_id, "outcome": outcome, "bytes": nbytes, "blocks": blocks, "ms": ms,
                                                  "start_unix_s": start_unix_s, "end_unix_s": end_unix_s}
                while len(self._by_transfer) > self.KEPT_PULLS:
                    del self._by_transfer[next(iter(self._by_transfer))]

    def take(self, transfer_id: str) -> dict | None:
        """The pull of `transfer_id` as its connector reported it (once), or None."""
        with self._lock:
            return self._by_transfer.pop(transfer_id, None)

    def snapshot(self) -> dict:
        with self._lock:
            return {"outcomes": dict(self._outcomes), "bytes": self._bytes, "recent_ms": list(self._ms[-16:])}


def _ack_reason(request: dict) -> str:
    return "acked" if request.get("ok") else f"nacked:{request.get('reason', '')}"


@dataclass
class PullResult:
    blocks: int = 0
    bytes: int = 0
    num_tokens: int = 0
    ms: float = 0.0
    acked: bool = False


def pull(address: str, transfer_id: str, *, from_block: int, layout: dict, deadline_s: float,
         into: Callable[[int, int], memoryview]) -> PullResult:
    """Pull blocks from_block.. of `transfer_id` from P's server at `address` into
    `into(first_block, count)` (a buffer of count * block_bytes bytes, asked for in runs of
    wire.chunks), checking layout, sizes and CRC32s; then ACK (P frees the lease). On any failure
    P is told (a NACK, best effort: the lease frees it otherwise) and a KvTransferError is raised;
    nothing received counts as loaded then."""
    started = time.monotonic()
    deadline = started + deadline_s
    conn = connect(address, deadline_s)
    with conn:
        result = PullResult()
        try:
            # P may learn of the transfer a moment before its blocks are staged: it waits for them
            # while the rest of the stream still fits the deadline.
            send(conn, {"op": "pull", "version": wire.VERSION, "transfer_id": transfer_id, "from_block": from_block,
                         "wait_s": round(deadline_s * 0.5, 3)}, deadline)
            _receive(conn, address, transfer_id, from_block, layout, deadline, into, result)
        except KvTransferError as err:
            nack(address, transfer_id, err.kind)
            raise type(err)(f"{err} (after {result.blocks} blocks, {result.bytes} bytes, "
                            f"{(time.monotonic() - started) * 1000:.0f} ms)") from None
        ack(conn, transfer_id, deadline, result)
    result.ms = (time.monotonic() - started) * 1000.0
    return result


def ack(conn: socket.socket, transfer_id: str, deadline: float, result: PullResult) -> None:
    """ACK a pull whose blocks all checked out; P must answer that it still held the lease: a
    transfer freed meanwhile (expired, released) may have had its memory reused mid-read."""
    send(conn, {"op": "ack", "transfer_id": transfer_id, "ok": True}, deadline)
    result.acked = bool(read_frame(conn, deadline).get("freed"))
    if not result.acked:
        raise UnknownTransfer(f"transfer {transfer_id}: P no longer held it at the ACK (lease expired or "
                              f"released while it was read)")


def _receive(conn, address, tid, from_block, layout, deadline, into, result: PullResult) -> None:
    head = read_frame(conn, deadline)
    if not head.get("ok"):
        cls = UnknownTransfer if head.get("reason") == UnknownTransfer.kind else Integrity
        raise cls(f"KV server {address}: {head.get('error', 'refused')}")
    if head.get("layout") != layout:
        raise Integrity(f"KV server {address} staged layout {head.get('layout')}, this engine has {layout}")
    result.num_tokens = int(head.get("num_tokens", 0))
    expected = int(head.get("blocks", 0)) - from_block
    sums = head.get("crc32")
    block_bytes = int(layout["block_bytes"])
    if not isinstance(sums, list) or len(sums) != expected:
        raise Integrity(f"transfer {tid}: {expected} blocks announced with checksums {str(sums)[:80]}")
    for first, count in wire.chunks(from_block, from_block + expected, block_bytes):
        buf = into(first, count)
        read_into(conn, buf, deadline)
        wire.check(tid, first, buf, block_bytes, sums[first - from_block:])
        result.blocks += count
        result.bytes += count * block_bytes
    end = read_frame(conn, deadline)
    if not end.get("end") or end.get("blocks") != expected:
        raise Integrity(f"transfer {tid}: stream ended with {end} after {result.blocks} of {expected} blocks")


IOV_MAX = 512


def send_buffers(conn: socket.socket, buffers) -> None:
    """sendall for a list of buffers: few system calls, no joining copy."""
    pending = [memoryview(b).cast("B") for b in buffers]
    n = 0
    while n < len(pending):
        sent = conn.sendmsg(pending[n:n + IOV_MAX])
        while n < len(pending) and sent >= len(pending[n]):
            sent -= len(pending[n])
            n += 1
        if sent:
            pending[n] = pending[n][sent:]


def nack(address: str, tid: str, reason: str) -> None:
    """Tell P to free a transfer D gave up on, on a fresh connection (the pull's own may be
    mid-stream or dead); best effort: the lease frees it otherwise."""
    try:
        request(address, {"op": "ack", "transfer_id": tid, "ok": False, "reason": reason}, timeout_s=0.5)
    except KvTransferError:
        pass


def connect(address: str, timeout_s: float) -> socket.socket:
    host, _, port = address.rpartition(":")
    try:
        conn = socket.create_connection((host, int(port)), timeout=max(0.05, timeout_s))
    except socket.timeout:
        raise TooSlow(f"KV server {address}: no connection within {timeout_s:.1f}s") from None
    except (OSError, ValueError) as err:
        raise PeerLost(f"cannot reach KV server {address}: {err}") from None
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return conn


def request(address: str, message: dict, timeout_s: float = 2.0) -> dict:
    """One request/reply on a fresh connection (release, stats)."""
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as conn:
            send(conn, message, deadline)
            return read_frame(conn, deadline)
    except socket.timeout:
        raise TooSlow(f"KV server {address}: no answer within {timeout_s:.1f}s") from None
    except (OSError, ValueError) as err:
        raise PeerLost(f"KV server {address}: {err}") from None


def send(conn: socket.socket, message: dict, deadline: float) -> None:
    _settimeout(conn, deadline)
    try:
        conn.sendall(wire.frame({**message, **internal_auth.hello_fields()}))
    except socket.timeout:
        raise TooSlow("KV transfer passed its deadline") from None
    except OSError as err:
        raise PeerLost(f"KV server connection failed: {err}") from None


def read_frame(conn: socket.socket, deadline: float) -> dict:
    head = bytearray(4)
    read_into(conn, memoryview(head), deadline)
    try:
        body = bytearray(wire.parse_frame_length(bytes(head)))
    except Exception as err:
        raise Integrity(str(err)) from None
    read_into(conn, memoryview(body), deadline)
    try:
        return wire.parse_frame_body(bytes(body))
    except Exception as err:
        raise Integrity(str(err)) from None


def read_into(conn: socket.socket, buf, deadline: float) -> None:
    view = memoryview(buf).cast("B")
    got, total = 0, len(view)
    while got < total:
        _settimeout(conn, deadline)
        try:
            n = conn.recv_into(view[got:], min(total - got, 8 << 20))
        except socket.timeout:
            raise TooSlow("KV transfer passed its deadline") from None
        except OSError as err:
            raise PeerLost(f"KV connection failed: {err}") from None
        if n == 0:
            raise PeerLost("KV server closed the connection mid-way")
        got += n


def _settimeout(conn: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TooSlow("KV transfer passed its deadline")
    conn.settimeout(left)
