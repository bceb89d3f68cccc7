"""Weights for the SIMULATED engine: it has none to load, but a pull is real.

A sim worker started with --weights-from, or a sim standby given LoadWeights, receives the
donor's real stream over the real transport with every check (identity, per-tensor name, dtype,
shape, CRC32, completeness) and then drops the bytes, since the simulator computes nothing from
them. So the scaler's standby pool and donor choice run end to end on sim workers, and only the
engine side (vLLM's reload) is left out. A failed pull reports "storage (simulated)", as a vLLM
worker falls back to storage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from services.worker.weights import checkpoint
from services.worker.weights.tcp import ReceiveStats
from services.worker.weights.transport import transport_for
from services.worker.weights.wire import TransferError

STORAGE = "storage (simulated)"


def pull_and_drop(model_dir: str, address: str, device: str = "cpu", mode: str = "auto",
                  stall_timeout_s: float = 10.0, deadline_s: float = 300.0) -> dict[str, Any]:
    """Receive and check the donor's whole stream; the report says how it went."""
    t0 = time.monotonic()
    index_list = checkpoint.read_index(Path(model_dir))
    index = {t.name: t for t in index_list}
    stats = ReceiveStats()
    report: dict[str, Any] = {"address": address, "simulated": True}
    try:
        for _ in transport_for(device, mode).receive(address, checkpoint.identity(Path(model_dir), index_list), index,
                                                     stats=stats, stall_timeout_s=stall_timeout_s,
                                                     deadline_s=deadline_s):
            pass
        report.update(source="donor")
    except TransferError as err:
        report.update(source=STORAGE, failure=f"{err.kind}: {err}")
    report.update(load_s=time.monotonic() - t0, tensors=stats.tensors, bytes=stats.bytes,
                  transport=stats.extra.get("transport", ""), premapped=bool(stats.extra.get("premapped")))
    return report
