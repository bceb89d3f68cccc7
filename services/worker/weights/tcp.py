"""The CPU transport: the weight stream over one TCP connection (loopback or between hosts).

The donor side runs on its own threads (socket sends release the GIL), beside the worker's event
loop and off the engine's process. The receiver side is a plain iterator, so it runs wherever the
tensors are needed: inside vLLM's engine process, feeding `reload_weights` as bytes arrive.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.common import internal_auth
from services.common.checksum import crc32
from services.worker.weights import wire
from services.worker.weights.checkpoint import TensorInfo
from services.worker.weights.source import WeightSource
from services.worker.weights.wire import DonorLost, DonorTooSlow, IdentityMismatch, IntegrityError

log = logging.getLogger("hfx.worker.weights")

HELLO_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 30.0  # a receiver that reads nothing for this long is dropped


class ThreadedServer:
    """A listening socket served on threads (sends release the GIL): `accept(conn, peer)` for
    each connection; the shared part of the TCP and shared-memory donors."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self._name = name
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed
            self.accept(conn, peer)

    def spawn(self, target, *args) -> None:
        threading.Thread(target=target, args=args, name=f"{self._name}-send", daemon=True).start()

    def accept(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError


class TcpWeightServer(ThreadedServer):
    """Serves `source` to every receiver that connects, at most `max_streams` at once."""

    def __init__(self, source: WeightSource, host: str = "127.0.0.1", port: int = 0, max_streams: int = 2) -> None:
        self.source = source
        super().__init__(socket.create_server((host, port), reuse_port=False), "weights")
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._slots = threading.BoundedSemaphore(max_streams)
        self.streams_served = 0

    def accept(self, conn: socket.socket, peer) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("weight stream to %s refused: %s streams already running", peer, "max")
            conn.close()
            return
        self.spawn(self._serve_one, conn, peer)

    def _serve_one(self, conn: socket.socket, peer) -> None:
        started = time.monotonic()
        try:
            with conn:
                conn.settimeout(HELLO_TIMEOUT_S)
                hello = _read_frame(conn)
                if not internal_auth.hello_allowed(hello):
                    log.warning("weight stream to %s refused: %s", peer, internal_auth.DENIED_HELLO)
                    conn.sendall(wire.frame({"error": internal_auth.DENIED_HELLO}))
                    return
                conn.settimeout(SEND_TIMEOUT_S)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if hello.get("identity") != self.source.identity:
                    log.warning("receiver %s wants model %s, this donor has %s (it will refuse the stream)",
                                peer, str(hello.get("identity"))[:12], self.source.identity[:12])
                send_stream(conn, self.source)
            self.streams_served += 1
            elapsed = time.monotonic() - started
            log.info("streamed %.1f MB of weights to %s in %.2fs (%.0f MB/s)", self.source.total_bytes / 1e6, peer,
                     elapsed, self.source.total_bytes / 1e6 / max(elapsed, 1e-9))
        except Exception as err:  # a receiver that went away must not take the donor down
            log.warning("weight stream to %s ended early: %s", peer, err)
        finally:
            self._slots.release()


def send_stream(conn: socket.socket, source: WeightSource) -> None:
    """MANIFEST, every tensor (header + bytes), END."""
    conn.sendall(wire.frame({"version": wire.VERSION, "identity": source.identity, "tensors": source.tensor_count,
                             "total_bytes": source.total_bytes}))
    sent = 0
    for e in source.entries():
        conn.sendall(wire.frame({"name": e.info.name, "dtype": e.info.dtype, "shape": list(e.info.shape),
                                 "nbytes": e.info.nbytes, "crc32": e.crc32}))
        conn.sendall(e.data)
        sent += 1
    conn.sendall(wire.frame({"end": True, "tensors": sent}))


@dataclass
class ReceiveStats:
    tensors: int = 0
    bytes: int = 0
    connect_s: float = 0.0
    stream_s: float = 0.0       # first manifest byte to END, including the consumer's time between tensors
    recv_s: float = 0.0         # time inside socket reads
    crc_s: float = 0.0
    donor_identity: str = ""
    extra: dict = field(default_factory=dict)


def receive(address: str, identity: str, index: dict[str, TensorInfo], *, stall_timeout_s: float = 10.0,
            deadline_s: float = 300.0, alloc: Callable[[int], memoryview] | None = None,
            stats: ReceiveStats | None = None) -> Iterator[tuple[TensorInfo, memoryview]]:
    """Connect to the donor at `address` and yield (tensor info, its bytes) as each one checks out.

    `index` is the receiver's own checkpoint index by name; `alloc(nbytes)` returns a writable
    buffer to receive into (default: a bytearray). Raises a `TransferError` subclass when the
    donor is unreachable or dies (DonorLost), stalls longer than `stall_timeout_s` or the whole
    stream passes `deadline_s` (DonorTooSlow), serves another model (IdentityMismatch), or sends
    anything that does not check out (IntegrityError)."""
    stats = stats if stats is not None else ReceiveStats()
    alloc = alloc or (lambda n: memoryview(bytearray(n)))
    host, _, port = address.rpartition(":")
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    try:
        conn = socket.create_connection((host, int(port)), timeout=stall_timeout_s)
    except OSError as err:
        raise DonorLost(f"cannot connect to donor {address}: {err}") from None
    stats.connect_s = time.monotonic() - t0
    stats.extra["transport"] = "tcp"
    try:
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            reader = _Reader(conn, address, deadline, stats)
            conn.sendall(wire.frame({"version": wire.VERSION, "identity": identity, **internal_auth.hello_fields()}))
            t1 = time.monotonic()
            manifest = reader.frame()
            wire.check_manifest(manifest, address)
            stats.donor_identity = str(manifest.get("identity", ""))
            if manifest.get("version") != wire.VERSION:
                raise IntegrityError(f"donor {address} speaks wire version {manifest.get('version')}, not {wire.VERSION}")
            if stats.donor_identity != identity:
                raise IdentityMismatch(f"donor {address} serves model {stats.donor_identity[:12]}, "
                                       f"this worker loads {identity[:12]}")
            seen: set[str] = set()
            while True:
                header = reader.frame()
                if header.get("end"):
                    missing = sorted(set(index) - seen)
                    if missing or header.get("tensors") != len(seen):
                        raise IntegrityError(f"donor {address} ended after {len(seen)} of {len(index)} tensors "
                                             f"(missing e.g. {missing[:3]})")
                    stats.stream_s = time.monotonic() - t1
                    return
                info = _check_header(header, index, seen, address)
                buf = alloc(info.nbytes)
                reader.into(buf)
                _accept_tensor(info, buf, header, address, seen, stats)
                yield info, buf
    except (ConnectionError, OSError) as err:
        if isinstance(err, socket.timeout):
            raise DonorTooSlow(f"donor {address} sent nothing for {stall_timeout_s:.1f}s") from None
        raise DonorLost(f"donor {address} connection failed: {err}") from None


def _check_header(header: dict, index: dict[str, TensorInfo], seen: set[str], address: str) -> TensorInfo:
    name = header.get("name")
    info = index.get(name) if isinstance(name, str) else None
    if info is None:
        raise IntegrityError(f"donor {address} sent tensor {name!r}, which this checkpoint does not have")
    if name in seen:
        raise IntegrityError(f"donor {address} sent tensor {name!r} twice")
    if header.get("dtype") != info.dtype or tuple(header.get("shape", ())) != info.shape:
        raise IntegrityError(f"tensor {name}: donor {address} sent {header.get('dtype')} {header.get('shape')}, "
                             f"expected {info.dtype} {list(info.shape)}")
    if header.get("nbytes") != info.nbytes:
        raise IntegrityError(f"tensor {name}: donor {address} sent {header.get('nbytes')} bytes, expected {info.nbytes}")
    return info


class _Reader:
    def __init__(self, conn: socket.socket, address: str, deadline: float, stats: ReceiveStats) -> None:
        self.conn, self.address, self.deadline, self.stats = conn, address, deadline, stats

    def frame(self) -> dict:
        head = bytearray(4)
        self.into(memoryview(head))
        body = bytearray(wire.parse_frame_length(bytes(head)))
        self.into(memoryview(body))
        return wire.parse_frame_body(bytes(body))

    def into(self, buf: memoryview) -> None:
        view = memoryview(buf).cast("B")
        got, total = 0, len(view)
        r0 = time.monotonic()
        while got < total:
            if time.monotonic() > self.deadline:
                raise DonorTooSlow(f"donor {self.address}: stream passed its deadline")
            n = self.conn.recv_into(view[got:], min(total - got, 8 << 20))
            if n == 0:
                raise DonorLost(f"donor {self.address} closed the stream mid-way")
            got += n
        self.stats.recv_s += time.monotonic() - r0


def _read_frame(conn: socket.socket) -> dict:
    head = wire.recv_exact(conn, 4)
    return wire.parse_frame_body(wire.recv_exact(conn, wire.parse_frame_length(head)))


def _accept_tensor(info: TensorInfo, data, header: dict, address: str, seen: set[str], stats: ReceiveStats) -> None:
    """The last check of a tensor on any transport: its bytes against the header's CRC32; then it
    counts as received. Raises IntegrityError."""
    c0 = time.monotonic()
    crc = crc32(data)
    stats.crc_s += time.monotonic() - c0
    if crc != header.get("crc32"):
        raise IntegrityError(f"tensor {info.name} from donor {address}: CRC32 {crc:#010x} "
                             f"!= header's {header.get('crc32')!r}")
    seen.add(info.name)
    stats.tensors += 1
    stats.bytes += info.nbytes
