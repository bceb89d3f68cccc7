"""KV transfer throughput and latency by transfer size, against this machine's memcpy bandwidth
measured in the same run (issue 10's goal: >= 50% of memcpy for >= 16 MiB on one host).

Stages synthetic KV blocks (the tiny model's block: 256 KiB; 4 layers x 2 x 128 tokens x 128 x
bf16) the way a prefill worker does (into its staging arena, or with --staging file a shared-memory
file per transfer, + CRC32s; served by the worker service's KvServer in a process of its own),
then times what a decode worker's connector does, end to end: ask, copy every block into its
destination buffer (the receive buffer, kept between pulls as the connector keeps it), check each
CRC32, ACK (P frees; a same-host pull sends it without waiting for P's answer, samehost.py).
Not timed: the connector's scatter from that buffer into the KV cache.
Transports: "samehost" (copy from P's shared memory) and "tcp" (stream over loopback). memcpy:
numpy copy of the same number of bytes between two preallocated, faulted-in buffers, timed beside
each pull (so a machine shared with other jobs slows both alike): just before it on even repeats,
just after it on odd ones. The order matters on a shared machine: each repeat starts after a 0.4 s
pause, and the second of the two to run is the likelier to lose a scheduler tick (4 ms here) to
another session's process (in one run at load 8, memcpy always first: the 16 MiB pull lost one in
10 of 11 repeats, the memcpy in none; pull first: 2 of 11 and none). "% memcpy" is the median over
the repeats of memcpy time / pull time. "waited" is the median time the pull and the memcpy spent
runnable but not running (the thread's run-queue wait, /proc/thread-self/schedstat), i.e. the cores
given to other processes (the pull's includes ~0.2 ms of its ACK thread's wake-up, which runs just
after the pull's clock stops, when the wait is read). Medians of --repeats.

    .venv/bin/python benchmarks/kv_transfer.py [--sizes-mib 1 4 16 64] [--repeats 7] [--staging arena|file]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import argtypes  # noqa: E402
from services.worker.kv import arena, samehost, shm, tcp, wire  # noqa: E402
from services.worker.kv.store import StagingStore  # noqa: E402

BLOCK_BYTES = 256 * 1024
LAYOUT = {"layers": 4, "dtype": "torch.bfloat16", "block_shape": [2, 128, 128], "block_size": 128,
          "block_bytes": BLOCK_BYTES}
MiB = 1024 * 1024


def run_queue_wait_ns() -> int:
    """This thread's time runnable but not running so far (0 where the kernel does not say)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def timed(fn) -> tuple[float, float]:
    """(seconds fn took, seconds of it this thread waited for a core)."""
    w, t = run_queue_wait_ns(), time.perf_counter()
    fn()
    return time.perf_counter() - t, (run_queue_wait_ns() - w) / 1e9


class Memcpy:
    """One memcpy of `nbytes` between two faulted-in buffers."""

    def __init__(self, nbytes: int) -> None:
        self.src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
        self.dst = np.empty_like(self.src)
        np.copyto(self.dst, self.src)  # fault the pages in first

    def __call__(self) -> None:
        np.copyto(self.dst, self.src)


def serve(staging: str, ready, stop) -> None:
    """P's side, in a process of its own as in a deployment (the worker service's)."""
    server = tcp.KvServer(StagingStore(), staging).start()
    ready.put(server.address)
    stop.wait()
    server.close()


def transfer(address: str, staging: str, size: int, repeats: int, pull, stager) -> tuple[float, ...]:
    """(pull GB/s, pull ms, memcpy GB/s, pull's % of memcpy, ms the pull and the memcpy waited for
    a core): medians over `repeats`."""
    memcpy = Memcpy(size)
    n = size // BLOCK_BYTES
    rows = np.random.default_rng(1).integers(0, 256, (n, BLOCK_BYTES), dtype=np.uint8)
    sums = [wire.crc32(r) for r in rows]
    dst = np.empty_like(rows)
    dst[:] = 0  # the receive buffer, faulted in
    times, copies, waits = [], [], []
    for r in range(repeats):
        tid = f"bench-{size}-{r}-{pull.__module__.rsplit('.', 1)[-1]}"
        region = stager.region(tid, rows.nbytes) if stager is not None else None
        offset = None
        if region is not None:
            offset, view = region
            view[:] = rows.reshape(-1)
        shm.write(staging, tid, rows, sums, n * 128, LAYOUT, time.time() + 60, arena_offset=offset)
        time.sleep(2 * tcp.REAP_INTERVAL_S)  # P adopts it under a lease before it names it (as the engine does)
        results = []

        def one_pull() -> None:
            results.append(pull(address, tid, from_block=0, layout=LAYOUT, deadline_s=30.0,
                                into=lambda i, count: memoryview(dst[i:i + count])))

        first, second = (memcpy, one_pull) if r % 2 == 0 else (one_pull, memcpy)  # see the module's docstring
        a, b = timed(first), timed(second)
        (c, cw), (t, tw) = (a, b) if r % 2 == 0 else (b, a)
        copies.append(c)
        times.append(t)
        waits.append((tw, cw))
        assert results[0].blocks == n and results[0].acked
    assert (dst == rows).all()
    median = statistics.median(times)
    share = statistics.median(c / t for c, t in zip(copies, times))
    return (size / median / 1e9, median * 1000.0, size / statistics.median(copies) / 1e9, 100 * share,
            1000 * statistics.median(w for w, _ in waits), 1000 * statistics.median(w for _, w in waits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=argtypes.positive_int, nargs="+", default=[1, 4, 16, 64],
                        help="transfer sizes, MiB (whole 256 KiB blocks)")
    parser.add_argument("--repeats", type=argtypes.positive_int, default=7, help="pulls per size and transport (medians)")
    parser.add_argument("--staging", choices=("arena", "file"), default="arena",
                        help="P stages into its arena (as workers do) or into a file per transfer")
    args = parser.parse_args()
    root = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="hfx-kv-bench-", dir=root) as staging:
        stager = None
        if args.staging == "arena":
            arena.create(staging, 2 * max(args.sizes_mib) * MiB)
            stager = shm.ArenaStager(staging)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=serve, args=(staging, ready, stop), daemon=True)
        server.start()
        address = ready.get(timeout=60)
        try:
            print(f"staging: {args.staging}")
            print(f"{'size MiB':>8} {'memcpy GB/s':>11} {'transport':>9} {'GB/s':>7} {'ms':>8} {'% memcpy':>9}"
                  f" {'waited ms (pull / memcpy)':>26}")
            for mib in args.sizes_mib:
                for name, pull in (("samehost", samehost.pull), ("tcp", tcp.pull)):
                    gbps, ms, base, share, pull_wait, copy_wait = transfer(address, staging, mib * MiB, args.repeats,
                                                                           pull, stager)
                    print(f"{mib:>8} {base:>11.2f} {name:>9} {gbps:>7.2f} {ms:>8.2f} {share:>8.0f}%"
                          f" {pull_wait:>17.2f} / {copy_wait:.2f}", flush=True)
        finally:
            stop.set()
            server.join(10)


if __name__ == "__main__":
    main()
