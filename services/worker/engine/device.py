"""The device seam: the engine arguments that differ between CPU, CUDA GPUs and Ascend NPUs.

Everything device-specific about starting vLLM lives here, so adding a device (vllm-ascend on
torch-npu) is one more branch in `device_engine_kwargs`, not edits across the engine.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

DEVICES = ("cpu", "cuda", "npu")


class DeviceUnavailable(RuntimeError):
    """The named device cannot be used from this installation."""


def device_engine_kwargs(device: str, *, kv_cache_memory_bytes: int | None) -> dict[str, Any]:
    """vLLM engine arguments that `device` requires or defaults differently."""
    if device == "cpu":
        return _cpu_kwargs(kv_cache_memory_bytes)
    if device == "cuda":
        return _cuda_kwargs(kv_cache_memory_bytes)
    if device == "npu":
        return _npu_kwargs(kv_cache_memory_bytes)
    raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")


def device_environment(device: str, *, cpu_cores: str = "") -> dict[str, str]:
    """Environment for the engine's processes on `device`.

    On CPU, engines sharing a machine must not share cores: each vLLM CPU engine runs OpenMP
    threads that spin at barriers, so two engines whose threads share cores stall each other
    (a thread spins while the one it waits for is descheduled): on this 2-core machine that
    showed as first tokens held back ~800 ms and then delivered in one burst. `cpu_cores`
    ("0", "2-3", "0,4") sizes this engine's OpenMP pool to its share; `pin_cpu_cores` then
    binds the process. VLLM_CPU_OMP_THREADS_BIND is set too, for vLLM's multiprocess executor,
    which binds per rank; the single-process engine core used here does not read it.
    """
    if device == "cpu" and cpu_cores:
        return {"VLLM_CPU_OMP_THREADS_BIND": cpu_cores, "OMP_NUM_THREADS": str(len(parse_cores(cpu_cores)))}
    return {}


def pin_cpu_cores(device: str, cpu_cores: str) -> set[int] | None:
    """Binds this process (and so the engine core vLLM spawns next, which inherits it) to
    `cpu_cores` on CPU; returns the cores, or None when there is nothing to pin."""
    if device != "cpu" or not cpu_cores:
        return None
    cores = parse_cores(cpu_cores)
    os.sched_setaffinity(0, cores)
    return cores


def parse_cores(spec: str) -> set[int]:
    """"0", "2-3", "0,4-5" -> {0}, {2, 3}, {0, 4, 5}."""
    cores: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"bad core range {part!r} in {spec!r}")
        cores.update(range(first, last + 1))
    if not cores:
        raise ValueError(f"no cores in {spec!r}")
    return cores


def _cpu_kwargs(kv_cache_memory_bytes: int | None) -> dict[str, Any]:
    # On CPU gpu_memory_utilization means a fraction of the NUMA node's RAM, and the default
    # refuses to start on small machines; an explicit KV size is predictable. Eager mode: there
    # are no CUDA graphs to capture, and compiling would dominate start-up time.
    kv_bytes = kv_cache_memory_bytes if kv_cache_memory_bytes is not None else 256 * 1024 * 1024
    return {"kv_cache_memory_bytes": kv_bytes, "enforce_eager": True}


def _cuda_kwargs(kv_cache_memory_bytes: int | None) -> dict[str, Any]:
    # Without an explicit KV size vLLM profiles free GPU memory itself, which is what a GPU
    # deployment wants; an explicit size lets several engines share one device.
    if kv_cache_memory_bytes is None:
        return {}
    return {"kv_cache_memory_bytes": kv_cache_memory_bytes}


def _npu_kwargs(kv_cache_memory_bytes: int | None) -> dict[str, Any]:
    # vllm-ascend registers itself as a vLLM platform plugin; vLLM then picks the NPU on its
    # own, so the arguments are those of a GPU once the plugin is importable.
    for module, package in (("torch_npu", "torch-npu"), ("vllm_ascend", "vllm-ascend")):
        if importlib.util.find_spec(module) is None:
            raise DeviceUnavailable(
                f"device 'npu' needs the {package} package (import {module}); install "
                "vllm-ascend with torch-npu on an Ascend machine"
            )
    return _cuda_kwargs(kv_cache_memory_bytes)
