"""Weight transport alone, against memcpy in the same run: no vLLM, no engine.

A donor process serves the checkpoint from memory (as `hfx worker --serve-weights` does); this
process pulls the whole stream several times over each transport, every tensor checked (name,
dtype, shape, CRC32, completeness), and keeps nothing. The receiver's variants, in the same run:

  zlib          CRC32 with zlib (what the pull used before)
  isal          CRC32 with ISA-L over the same memoryviews (no copy): what the pull uses now
  premapped     (shm only) isal, after the receiver mapped the donor's files and faulted their
                pages in ahead of the pull (`prepare`, as a standby does when told its donor):
                that step is timed apart (prepare s) and is not in the pull's time
The variants take turns pull by pull (a machine shared with other jobs slows them alike).
With --copy, each pull also copies every tensor into a destination buffer of the checkpoint's
size whose pages were faulted in before (as vLLM's dummy-loaded parameters are): the bytes end
in the receiver's own memory, and "copy s" is that part of the pull.

(Also tried, at commit 335bca9, and dropped as slower here: populating the shared-memory maps at
once with MADV_POPULATE_READ, and a donor sending from its memfds with sendfile; BENCHMARKS.md.)

memcpy: numpy copy between two pre-faulted buffers of the checkpoint's size, i.e. what it costs to
read and write every byte once (page faults left out), timed just before each pull so that a
machine shared with other jobs slows both alike; "of memcpy" is the median over the pulls of
memcpy time / pull time. The shm transport ends where vLLM's copy begins (its bytes are views
into the donor's pages, each page faulted in by the check's first touch); the TCP one has the
bytes in the receiver's buffers.

  python -m benchmarks.d2d_transport --params 500M            # the ~1 GB checkpoint
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from services.common import checksum
from services.common.model import ensure_default_model, parse_params
from services.worker.weights import checkpoint, tcp
from services.worker.weights.tcp import ReceiveStats
from services.worker.weights.transport import PreparesPull, transport_for

VARIANTS = {"shm": ("zlib", "isal", "premapped"), "tcp": ("zlib", "isal")}
PHASES = ("gbps", "seconds", "crc_s", "recv_s", "copy_s", "connect_s", "handshake_s", "map_s", "prepare_s",
          "memcpy_gbps", "of_memcpy")


class Memcpy:
    """One memcpy of `nbytes` between two faulted-in buffers, timed on each call."""

    def __init__(self, nbytes: int) -> None:
        self.src = np.ones(nbytes, dtype=np.uint8)
        self.dst = np.empty(nbytes, dtype=np.uint8)
        self.dst.fill(0)  # both touched: page faults are not part of the copy

    def __call__(self) -> float:
        t = time.perf_counter()
        np.copyto(self.dst, self.src)
        return time.perf_counter() - t


def serve(model_dir: str) -> None:
    """The donor process: serve the checkpoint, print the address, wait for stdin to close."""
    from services.worker.weights.source import CheckpointSource

    handle = transport_for("cpu").serve(CheckpointSource.load(model_dir), "127.0.0.1", 0)
    print(handle.address, flush=True)
    sys.stdin.read()
    handle.close()


def pull(address: str, model_dir: Path, mode: str, variant: str, memcpy: Memcpy, dest: np.ndarray | None) -> dict:
    tcp.crc32 = zlib.crc32 if variant == "zlib" else checksum.crc32  # what every transport's check calls
    copy_s = memcpy()
    index_list = checkpoint.read_index(model_dir)
    index = {t.name: t for t in index_list}
    identity = checkpoint.identity(model_dir, index_list)
    stats = ReceiveStats()
    transport = transport_for("cpu", mode)
    prepare_s = 0.0
    if variant == "premapped":
        assert isinstance(transport, PreparesPull)
        t = time.perf_counter()
        if not transport.prepare(address, identity, background=False).get("prepared"):
            raise RuntimeError("the donor's files could not be mapped ahead")
        prepare_s = time.perf_counter() - t

    def alloc(nbytes: int) -> memoryview:  # as the engine's receiver: an uninitialised tensor
        return memoryview(np.empty(nbytes, dtype=np.uint8))

    at, copying = 0, 0.0
    t0 = time.perf_counter()
    for _, buf in transport.receive(address, identity, index, alloc=alloc, stats=stats):
        if dest is not None:
            c = time.perf_counter()
            n = len(buf)
            np.copyto(dest[at:at + n], np.frombuffer(buf, dtype=np.uint8))
            at += n
            copying += time.perf_counter() - c
    elapsed = time.perf_counter() - t0
    if bool(stats.extra.get("premapped")) != (variant == "premapped"):
        raise RuntimeError(f"variant {variant}: the pull {'did not use' if variant == 'premapped' else 'used'} "
                           f"a mapping made ahead")
    return {"gbps": stats.bytes / elapsed / 1e9, "seconds": elapsed, "crc_s": stats.crc_s, "recv_s": stats.recv_s,
            "copy_s": copying, "connect_s": stats.connect_s, "handshake_s": stats.extra.get("handshake_s", 0.0),
            "map_s": stats.extra.get("map_s", 0.0), "prepare_s": prepare_s,
            "bytes": stats.bytes, "memcpy_gbps": stats.bytes / copy_s / 1e9, "of_memcpy": copy_s / elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint dir (default: the tiny model, or the --params one)")
    p.add_argument("--params", type=parse_params, help="the model `hfx model init --params N` builds (built if absent)")
    p.add_argument("--repeats", type=int, default=3, help="pulls per transport and variant; the median is shown "
                   "(default %(default)s)")
    p.add_argument("--transports", nargs="+", choices=("shm", "tcp"), default=["shm", "tcp"])
    p.add_argument("--copy", action="store_true", help="also copy every tensor into pre-faulted memory of the "
                   "receiver's (the pull then ends with the bytes in the receiver's own buffers)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here (default: print only)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    model_dir = Path(args.model) if args.model else ensure_default_model(params=args.params)
    size = sum(t.nbytes for t in checkpoint.read_index(model_dir))
    donor = subprocess.Popen([sys.executable, "-m", "benchmarks.d2d_transport", "--serve", str(model_dir)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = donor.stdout.readline().strip()
        if not address:
            raise RuntimeError("the donor process did not start")
        memcpy = Memcpy(size)
        dest = np.ones(size, dtype=np.uint8) if args.copy else None  # written: its pages are in
        result = {"model": str(model_dir), "tensor_bytes": size, "copy": args.copy, "pulls": {}, "runs": {}}
        print(f"model {model_dir}: {size / 1e9:.3f} GB of tensors{'; each pull copies them into the receiver' if args.copy else ''}")
        for mode in args.transports:
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS[mode]}
            for _ in range(args.repeats):
                for variant in VARIANTS[mode]:
                    runs[variant].append(pull(address, model_dir, mode, variant, memcpy, dest))
            for variant in VARIANTS[mode]:
                row = {k: statistics.median(r[k] for r in runs[variant]) for k in PHASES}
                result["pulls"][f"{mode}/{variant}"] = row
                result["runs"][f"{mode}/{variant}"] = runs[variant]
                shares = ", ".join(f"{r['of_memcpy']:.0%}" for r in runs[variant])
                print(f"{mode:>4} {variant:<9} {row['gbps']:6.2f} GB/s = {row['of_memcpy']:5.1%} of memcpy "
                      f"({row['memcpy_gbps']:.2f} GB/s)  (median of {args.repeats}; each pull's share of memcpy: "
                      f"{shares})", flush=True)
                print(f"     pull {row['seconds']:.3f} s: connect {row['connect_s']:.4f}, handshake {row['handshake_s']:.4f}, "
                      f"map {row['map_s']:.4f}, CRC {row['crc_s']:.3f}, socket reads {row['recv_s']:.3f}, copy "
                      f"{row['copy_s']:.3f}; done ahead of it: prepare {row['prepare_s']:.3f} s"
                      + (f" (prepare + pull: {size / (row['prepare_s'] + row['seconds']) / 1e9:.2f} GB/s)"
                         if row["prepare_s"] else ""), flush=True)
    finally:
        donor.stdin.close()
        donor.wait(timeout=30)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
