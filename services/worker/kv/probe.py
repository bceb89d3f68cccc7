"""KV transfer cost per token, measured at worker start for the latency model
(LatencyModel.kv_transfer_ms_per_token, charged to a split request's TTFT by the policy).

What is timed is what a decode worker on this host does with this worker's staged KV: a synthetic
transfer of `tokens` tokens in this engine's layout is staged in the worker's arena (its top end:
the engine's own regions are handed out from the bottom, and none are held before the worker
serves), then pulled back through the worker's own KV server (copy, CRC32 per block, ACK), the
median of `repeats`. Not timed: D writing the blocks into its KV cache, D's engine step. A decode
worker on another host streams over TCP instead, which this does not measure.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from services.worker.kv import arena, samehost, shm, wire

PROBE_TOKENS = 2048
PROBE_REPEATS = 5


def layout_for(bytes_per_token: int, block_size: int, layers: int, dtype: str) -> dict:
    return {"layers": layers, "dtype": dtype, "block_shape": [bytes_per_token], "block_size": block_size,
            "block_bytes": bytes_per_token * block_size}


def measure(address: str, staging_dir: str, layout: dict, tokens: int = PROBE_TOKENS,
            repeats: int = PROBE_REPEATS) -> dict:
    """{"ms_per_token", "ms", "bytes", "tokens", "staging"}: the median pull of `tokens` tokens."""
    block_bytes = int(layout["block_bytes"])
    n = max(1, -(-tokens // int(layout["block_size"])))
    rows = np.random.default_rng(0).integers(0, 256, (n, block_bytes), dtype=np.uint8)
    sums = [wire.crc32(r) for r in rows]
    top = None
    try:
        region = arena.mapped(arena.path(staging_dir), writable=True)
        if rows.nbytes <= len(region):
            top = len(region) - -(-rows.nbytes // arena.ALIGN) * arena.ALIGN
            region[top:top + rows.nbytes] = rows.reshape(-1)
    except OSError:  # no arena: staged as the engine would then stage, to a file
        pass
    into_rows = np.zeros_like(rows)
    times = []
    for r in range(repeats):
        tid = f"probe-{time.time_ns()}-{r}"
        shm.write(staging_dir, tid, rows, sums, tokens, layout, time.time() + 60, arena_offset=top)
        started = time.perf_counter()
        result = samehost.pull(address, tid, from_block=0, layout=layout, deadline_s=10.0,
                               into=lambda i, count: into_rows[i:i + count].data)
        times.append((time.perf_counter() - started) * 1000.0)
        if result.blocks != n:
            raise wire.Integrity(f"probe pulled {result.blocks} of {n} blocks")
    ms = statistics.median(times)
    return {"ms_per_token": ms / tokens, "ms": round(ms, 3), "bytes": int(rows.nbytes), "tokens": tokens,
            "staging": "arena" if top is not None else "file"}
