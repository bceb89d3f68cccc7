"""The device seam: the engine arguments that differ between CPU, CUDA GPUs and Ascend NPUs.

Everything device-specific about starting vLLM lives here, so adding a device (vllm-ascend on
torch-npu) is one more branch in `device_engine_kwargs`, not edits across the engine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import Any

DEVICES = ("cpu", "cuda", "npu")

log = logging.getLogger(__name__)


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


# Read by torch's CPU allocator (c10/core/alloc_cpu.cpp) at its first allocation: buffers of
# 2 MiB and more are madvise(MADV_HUGEPAGE)d, so the kernel backs them with transparent huge pages.
TORCH_THP_VAR = "THP_MEM_ALLOC_ENABLE"
# Read by glibc (2.35+) when a process starts: malloc madvises its heap and mmap'd chunks of 2 MiB
# and more for THP, but only where the kernel's THP mode is "madvise" (it checks).
GLIBC_TUNABLES_VAR = "GLIBC_TUNABLES"
GLIBC_HUGETLB_TUNABLE = "glibc.malloc.hugetlb"


def device_environment(device: str, *, cpu_cores: str = "", huge_pages: bool = False,
                       inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the engine's processes on `device`.

    On CPU, engines sharing a machine must not share cores: each vLLM CPU engine runs OpenMP
    threads that spin at barriers, so two engines whose threads share cores stall each other
    (a thread spins while the one it waits for is descheduled): on this 2-core machine that
    showed as first tokens held back ~800 ms and then delivered in one burst. `cpu_cores`
    ("0", "2-3", "0,4") sizes this engine's OpenMP pool to its share; `pin_cpu_cores` then
    binds the process. VLLM_CPU_OMP_THREADS_BIND is set too, for vLLM's multiprocess executor,
    which binds per rank; the single-process engine core used here does not read it.

    `huge_pages` (CPU): see `cpu_huge_pages_environment`; `inherited` is the environment the
    engine would otherwise get (default: this process's), so a GLIBC_TUNABLES already set is kept.
    """
    env: dict[str, str] = {}
    if device != "cpu":
        return env
    if cpu_cores:
        env.update({"VLLM_CPU_OMP_THREADS_BIND": cpu_cores, "OMP_NUM_THREADS": str(len(parse_cores(cpu_cores)))})
    if huge_pages:
        env.update(cpu_huge_pages_environment(os.environ if inherited is None else inherited))
    return env


def cpu_huge_pages_environment(inherited: Mapping[str, str]) -> dict[str, str]:
    """Let a CPU engine's large allocations use transparent huge pages (2 MiB instead of 4 KiB).

    Why: a standby's weight pull is vLLM's layer-wise reload, which allocates every layer's
    parameters anew and repacks them into new oneDNN buffers: ~1.1 GB of fresh memory per GB of
    weights, ~280 thousand 4 KiB page faults, a large share of the pull's time (BENCHMARKS.md,
    issue 12, fifth pass). Torch's allocator (the parameters) and glibc's malloc (oneDNN's
    buffers, which do not come from torch) are told separately. Both only advise: where THP is
    off (`/sys/kernel/mm/transparent_hugepage/enabled` = never) the kernel ignores the advice
    and the engine runs as without it; glibc does nothing unless the mode is "madvise".
    A tunable already in GLIBC_TUNABLES (this one or others) is kept.
    """
    tunables = inherited.get(GLIBC_TUNABLES_VAR, "")
    names = {item.partition("=")[0] for item in tunables.split(":") if item}
    env = {TORCH_THP_VAR: inherited.get(TORCH_THP_VAR, "1")}
    if GLIBC_HUGETLB_TUNABLE not in names:
        env[GLIBC_TUNABLES_VAR] = ":".join(filter(None, (tunables, f"{GLIBC_HUGETLB_TUNABLE}=1")))
    return env


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


def allow_amx() -> None:
    """Let this process use the CPU's AMX tiles; vLLM runs it in each of its processes as a general
    plugin (pyproject.toml, entry point group `vllm.general_plugins`), so it runs in the worker
    process that executes the model, before its first step.

    vLLM's CPU attention takes its AMX kernels wherever the CPU has AMX (cpu_attn._get_attn_isa),
    but Linux lets a process use AMX only after it asked (arch_prctl ARCH_REQ_XCOMP_PERM). oneDNN
    asks the first time its own matmuls use AMX, which a step of one token does not: an engine
    whose first step had one token (a one-token prompt, or a D's decode leg after a KV load) ran
    the AMX attention without it, and its worker died of SIGILL (exit -4, EngineDeadError) on an
    Intel VM with AMX. torch.cpu._init_amx() asks; nothing happens where there is no AMX. It never
    raises: vLLM does not catch what a plugin raises."""
    try:
        import torch

        if torch.cpu._is_amx_tile_supported() and not torch.cpu._init_amx():
            log.warning("AMX: this CPU has it but the kernel refused its use; vLLM's AMX attention may fail")
    except Exception:  # noqa: BLE001 - a failed probe must not stop vLLM from starting
        log.exception("AMX: could not ask for AMX tiles")
