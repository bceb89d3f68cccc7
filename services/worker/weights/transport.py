"""The transport seam: how a weight stream crosses from donor to receiver, per device.

A transport serves a `WeightSource` from the donor (`serve`) and, inside the receiver's engine
process, turns a donor address into checked (tensor info, bytes) pairs (`receive`). Integrity
(identity, per-tensor name/dtype/shape/CRC32, completeness) is the wire format's, the same for
every transport, so a new transport cannot weaken it.

Built, for CPU: "tcp" (any two processes that can reach each other) and "shm" (donor and receiver
on one host: the donor's memfds mapped by the receiver, no bytes on a socket); "auto" tries shm
and takes TCP when there is no shared-memory donor. Named, not built (no such
device here): on CUDA, vLLM's weight-transfer engines (vllm/distributed/weight_transfer/: NCCL
between hosts, CUDA IPC on one host) move the donor's parameters device to device, and a
receiver registers once their checksums agree; on Ascend, HCCL as vllm-ascend's netloader does.
Those keep the tensors on the device, so their source is the donor engine's own parameters (no
host copy) where its layers keep checkpoint layout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from services.worker.weights import shm, tcp
from services.worker.weights.checkpoint import TensorInfo
from services.worker.weights.source import SharedMemorySource, WeightSource


log = logging.getLogger("hfx.worker.weights")


class TransportUnavailable(RuntimeError):
    """No transport is built for this device."""


class DonorHandle(Protocol):
    address: str

    def close(self) -> None: ...


class WeightTransport(Protocol):
    name: str

    def serve(self, source: WeightSource, host: str, port: int) -> DonorHandle: ...

    def receive(self, address: str, identity: str, index: dict[str, TensorInfo], **opts: Any
                ) -> Iterator[tuple[TensorInfo, memoryview]]: ...


@runtime_checkable
class PreparesPull(Protocol):
    """A transport that can do part of a pull ahead, once the receiver knows its donor (the shm
    one: map the donor's files and fault their pages in). Returns a report; raises a
    TransferError (the pull itself then runs as if nothing was prepared)."""

    def prepare(self, address: str, identity: str, **opts: Any) -> dict: ...


MODES = ("auto", "tcp", "shm")


class _Servers:
    def __init__(self, tcp_server: tcp.TcpWeightServer, shm_server: shm.ShmWeightServer | None) -> None:
        self.address = tcp_server.address
        self._servers = [tcp_server] + ([shm_server] if shm_server else [])

    def close(self) -> None:
        for server in self._servers:
            server.close()


class CpuTransport:
    """TCP always; shared memory besides when the source is in memfds."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown weight transport {mode!r}; expected one of {MODES}")
        self.mode = mode
        self.name = mode

    def serve(self, source: WeightSource, host: str, port: int) -> DonorHandle:
        tcp_server = tcp.TcpWeightServer(source, host, port).start()
        shm_server = None
        if isinstance(source, SharedMemorySource) and source.fds:
            try:
                shm_server = shm.ShmWeightServer(source, tcp_server.address).start()
            except OSError as err:
                log.warning("weights over TCP only (no shared-memory socket): %s", err)
        return _Servers(tcp_server, shm_server)

    def receive(self, address: str, identity: str, index: dict[str, TensorInfo], **opts: Any
                ) -> Iterator[tuple[TensorInfo, memoryview]]:
        if self.mode in ("auto", "shm"):
            try:
                # The first tensor (or failure) is fetched here so that "no shm donor" is known
                # before anything is handed on; later failures propagate as TransferErrors.
                stream = shm.receive(address, identity, index, **opts)
                first = next(stream, None)
            except shm.ShmUnavailable:
                if self.mode == "shm":
                    raise
            else:
                return _chain(first, stream)
        return tcp.receive(address, identity, index, **opts)

    def prepare(self, address: str, identity: str, **opts: Any) -> dict:
        """shm and auto: map the donor's files now (shm.attach). TCP has nothing to do ahead."""
        if self.mode == "tcp":
            return {"prepared": False, "reason": "transport tcp: nothing to do ahead"}
        try:
            return {"prepared": True, **shm.attach(address, identity, stall_timeout_s=opts.get("stall_timeout_s", 10.0),
                                                   background=opts.get("background", True))}
        except shm.ShmUnavailable as err:
            if self.mode == "shm":
                raise
            return {"prepared": False, "reason": str(err)}


def _chain(first, stream):
    if first is not None:
        yield first
    yield from stream


_NOT_BUILT = {
    "cuda": "device 'cuda': weight pull over NCCL / CUDA IPC (vLLM's weight_transfer engines) is not built yet",
    "npu": "device 'npu': weight pull over HCCL (as vllm-ascend's netloader) is not built yet",
}


def transport_for(device: str, mode: str = "auto") -> WeightTransport:
    if device == "cpu":
        return CpuTransport(mode)
    raise TransportUnavailable(_NOT_BUILT.get(device, f"unknown device {device!r}"))
