"""CPU seconds per process tree, read from /proc (utime + stime of every live descendant).

`ps` time columns under-report on these machines; /proc/PID/stat does not. Process names are
used only to label rows, never to choose what to signal."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S


def snapshot() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            out[int(entry)] = st
    return out


def tree_cpu_s(roots: dict[str, int], snap: dict[int, tuple[int, float]]) -> dict[str, float]:
    """CPU seconds of each labelled root and, under "LABEL/children", of all its descendants."""
    children = defaultdict(list)
    for pid, (ppid, _) in snap.items():
        children[ppid].append(pid)
    out: dict[str, float] = {}
    for label, root in roots.items():
        if root not in snap:
            continue
        out[label] = snap[root][1]
        stack, total = list(children[root]), 0.0
        while stack:
            pid = stack.pop()
            total += snap[pid][1]
            stack.extend(children[pid])
        out[f"{label}/children"] = total
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
