"""The transport seam: how a weight stream crosses from donor to receiver, per device.

A transport serves a `WeightSource` from the donor (`serve`) and, inside the receiver's engine
process, turns a donor address into checked (tensor info, bytes) pairs (`receive`). Integrity
(identity, per-tensor name/dtype/shape/CRC32, completeness) is the wire format's, the same for
every transport, so a new transport cannot weaken it.

Built: "tcp" (CPU; any two processes that can reach each other). Named, not built (no such
device here): on CUDA, vLLM's weight-transfer engines (vllm/distributed/weight_transfer/: NCCL
between hosts, CUDA IPC on one host) move the donor's parameters device to device, and a
receiver registers once their checksums agree; on Ascend, HCCL as vllm-ascend's netloader does.
Those keep the tensors on the device, so their source is the donor engine's own parameters (no
host copy) where its layers keep checkpoint layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from services.worker.weights import tcp
from services.worker.weights.checkpoint import TensorInfo
from services.worker.weights.source import WeightSource


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


class TcpTransport:
    name = "tcp"

    def serve(self, source: WeightSource, host: str, port: int) -> DonorHandle:
        return tcp.TcpWeightServer(source, host, port).start()

    def receive(self, address: str, identity: str, index: dict[str, TensorInfo], **opts: Any
                ) -> Iterator[tuple[TensorInfo, memoryview]]:
        return tcp.receive(address, identity, index, **opts)


_NOT_BUILT = {
    "cuda": "device 'cuda': weight pull over NCCL / CUDA IPC (vLLM's weight_transfer engines) is not built yet",
    "npu": "device 'npu': weight pull over HCCL (as vllm-ascend's netloader) is not built yet",
}


def transport_for(device: str) -> WeightTransport:
    if device == "cpu":
        return TcpTransport()
    raise TransportUnavailable(_NOT_BUILT.get(device, f"unknown device {device!r}"))
