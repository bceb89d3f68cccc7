"""What runs inside vLLM's engine process (via `collective_rpc`): load weights from a donor's
stream, or from storage when the stream fails.

The stream feeds `model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`:
vLLM's layer-wise reload, which loads checkpoint-format tensors and re-runs each layer's
post-load processing (the CPU backend's weight repacking included). Each tensor reaches vLLM
only after its checks passed. When the stream fails part-way, the half-done reload session is
closed and every tensor is loaded again from the checkpoint files, so no layer keeps a mix.

Functions here are passed to `collective_rpc` by reference: vLLM's engine process imports this
module (it inherits the worker's sys.path), which needs VLLM_ALLOW_INSECURE_SERIALIZATION=1.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Protocol

from services.worker.weights import checkpoint
from services.worker.weights.tcp import ReceiveStats
from services.worker.weights.transport import PreparesPull, transport_for
from services.worker.weights.wire import TransferError


class PullSettings(Protocol):
    """The engine config fields a pull reads (vLLM's and the sim engine's configs both have them):
    typed, so a config without one fails the type check instead of a standby's PrepareWeights."""
    @property
    def model(self) -> str: ...
    @property
    def weights_transport(self) -> str: ...
    @property
    def weights_stall_timeout_s(self) -> float: ...
    @property
    def weights_deadline_s(self) -> float: ...


def pull_spec(config: PullSettings, address: str, device: str) -> dict[str, Any]:
    """What pull_weights and prepare_pull take, from an engine's config (its model and weights_*
    settings) and the device the weights land on: one place for every engine that pulls."""
    return {"address": address, "model_dir": config.model, "device": device,
            "transport": config.weights_transport, "stall_timeout_s": config.weights_stall_timeout_s,
            "deadline_s": config.weights_deadline_s}


def pull_weights(worker: Any, spec: dict) -> dict:
    """Load the model's weights from the donor at spec["address"]; on a TransferError fall back
    to the checkpoint in spec["model_dir"] (unless spec["fallback"] is False: then re-raise).
    Returns a report: source ("donor" or "storage"), timings, bytes, and the failure if any."""
    import torch

    runner = worker.model_runner
    model_dir = Path(spec["model_dir"])
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.monotonic()
    index_list = checkpoint.read_index(model_dir)
    index = {t.name: t for t in index_list}
    identity = spec.get("identity") or checkpoint.identity(model_dir, index_list)
    stats = ReceiveStats()
    report: dict[str, Any] = {"address": spec["address"], "identity": identity}
    dtypes = _torch_dtypes(torch)

    def alloc(nbytes: int) -> memoryview:  # TCP receives straight into a tensor's memory
        return torch.empty(nbytes, dtype=torch.uint8).numpy().data

    def stream():
        transport = transport_for(spec.get("device", "cpu"), spec.get("transport", "auto"))
        for info, buf in transport.receive(spec["address"], identity, index, alloc=alloc, stats=stats,
                                           stall_timeout_s=spec.get("stall_timeout_s", 10.0),
                                           deadline_s=spec.get("deadline_s", 300.0)):
            raw = torch.frombuffer(buf, dtype=torch.uint8) if info.nbytes else torch.empty(0, dtype=torch.uint8)
            yield info.name, raw.view(dtypes[info.dtype]).reshape(info.shape)

    try:
        runner.reload_weights(weights_iterator=stream(), is_checkpoint_format=True)
        report.update(source="donor", load_s=time.monotonic() - t0)
    except TransferError as err:
        report.update(failure=f"{err.kind}: {err}", failed_after_s=time.monotonic() - t0)
        _abandon_reload(runner)
        if not spec.get("fallback", True):
            raise
        t1 = time.monotonic()
        runner.reload_weights(weights_iterator=storage_weights(model_dir), is_checkpoint_format=True)
        report.update(source="storage", storage_load_s=time.monotonic() - t1, load_s=time.monotonic() - t0)
    report.update(tensors=stats.tensors, bytes=stats.bytes, connect_s=stats.connect_s, stream_s=stats.stream_s,
                  recv_s=stats.recv_s, crc_s=stats.crc_s, transport=stats.extra.get("transport", ""),
                  premapped=bool(stats.extra.get("premapped")),
                  # page faults this process took during the load (the receiver's side: fresh tensors
                  # the reload allocates and fills, and the donor's pages unless mapped ahead)
                  minor_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
    return report


def prepare_pull(worker: Any, spec: dict) -> dict:
    """Ahead of pull_weights from spec["address"]: whatever the transport can do early (shm: map
    the donor's files and fault their pages in, here, before returning). Never raises for the
    donor's sake: a failure is reported (prepared False) and the pull later runs as without it."""
    model_dir = Path(spec["model_dir"])
    index_list = checkpoint.read_index(model_dir)
    identity = spec.get("identity") or checkpoint.identity(model_dir, index_list)
    t0 = time.monotonic()
    transport = transport_for(spec.get("device", "cpu"), spec.get("transport", "auto"))
    if not isinstance(transport, PreparesPull):
        return {"prepared": False, "reason": f"transport {transport.name}: nothing to do ahead", "seconds": 0.0}
    try:
        report = transport.prepare(spec["address"], identity, stall_timeout_s=spec.get("stall_timeout_s", 10.0),
                                   background=False)
    except TransferError as err:
        report = {"prepared": False, "reason": f"{err.kind}: {err}"}
    return {**report, "seconds": time.monotonic() - t0}


def warm_reload(worker: Any, model_dir: str) -> dict:
    """A standby's rehearsal of the pull, before any decision: one layer-wise reload of zeros in
    the checkpoint's names, dtypes and shapes (views of one zeroed buffer of its largest tensor,
    so it reads no file and holds no second copy). The engine's dummy weights become zeros;
    nothing is served from them (a standby serves only after a real load, which replaces every
    weight with checks). Why: vLLM's reload ran 0.5-0.6 s faster the second time in the same
    engine process (BENCHMARKS.md, issue 12, fifth pass), so the decision's pull is a second."""
    import torch

    index_list = checkpoint.read_index(Path(model_dir))
    dtypes = _torch_dtypes(torch)
    zeros = torch.zeros(max((t.nbytes for t in index_list), default=0), dtype=torch.uint8)

    def tensors():
        for t in index_list:
            yield t.name, zeros[:t.nbytes].view(dtypes[t.dtype]).reshape(t.shape)

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.monotonic()
    worker.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
    return {"seconds": time.monotonic() - t0,
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0}


def load_from_storage(worker: Any, model_dir: str) -> dict:
    """Reload every weight from the checkpoint files (what a failed pull falls back to)."""
    t0 = time.monotonic()
    worker.model_runner.reload_weights(weights_iterator=storage_weights(Path(model_dir)), is_checkpoint_format=True)
    return {"source": "storage", "load_s": time.monotonic() - t0}


def storage_weights(model_dir: Path):
    """(name, tensor) for every tensor of the checkpoint, read from its files, as vLLM's own
    safetensors loader yields them."""
    from safetensors import safe_open

    for path in checkpoint.weight_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _abandon_reload(runner: Any) -> None:
    """Close a layer-wise reload that stopped part-way (vLLM's finalize places the old tensors
    back in layers that got nothing and processes the rest); the full reload that follows
    overwrites every layer."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    finalize_layerwise_reload(runner.get_model(), runner.vllm_config.model_config)


def _torch_dtypes(torch) -> dict[str, Any]:
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
            "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
            "BOOL": torch.bool}
