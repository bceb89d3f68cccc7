"""Sampling profiles of running processes with py-spy, and a text summary of where time goes.

`Recorder` attaches `py-spy record --format raw` (collapsed stacks, one line per stack with its
sample count) to each process for the duration of a measurement; `top` summarises a file by
the functions with the most samples, self and inclusive."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Recorder:
    def __init__(self, pids: dict[str, int], out_dir: Path, prefix: str, rate_hz: int = 250) -> None:
        self.paths: dict[str, Path] = {}
        self._procs: list[subprocess.Popen] = []
        beside = Path(sys.executable).parent / "py-spy"  # installed into this venv, maybe not on PATH
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in pids.items():
            path = out_dir / f"{prefix}-{label}.txt"
            self.paths[label] = path
            self._procs.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", str(rate_hz), "--format", "raw", "--nonblocking",
                 "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self, timeout_s: float = 30.0) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()


def top(path: Path, n: int = 15) -> list[tuple[str, int, int]]:
    """(function, self samples, inclusive samples), most inclusive first; idle frames excluded."""
    self_count: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        self_count[frames[-1]] += int(count)
        for frame in set(frames):
            incl[frame] += int(count)
    rows = [(f, self_count[f], incl[f]) for f, _ in incl.most_common(n * 3)]
    return [(f"total samples {total}", 0, total)] + rows[:n]
