"""Staged KV in shared memory: the engine's worker process writes each transfer's blocks here,
the worker service (a process that does not spin holding the GIL, as vLLM's engine processes do)
maps and serves them.

One transfer = `<id>.kv` (its blocks back to back, each `block_bytes`) and `<id>.json` (CRC32 per
block, tokens, layout, lease expiry), the JSON renamed into place last: a transfer whose JSON is
there is complete.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from pathlib import Path

from services.common import procs
from services.worker.kv.store import Staged

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def valid_id(transfer_id: str) -> bool:
    return bool(_ID.match(transfer_id)) and not transfer_id.startswith(".")


def write(directory: str, transfer_id: str, data, crc32: list[int], num_tokens: int, layout: dict,
          expires_unix_s: float) -> None:
    """`data`: a buffer of len(crc32) blocks of layout["block_bytes"] each."""
    base = Path(directory) / transfer_id
    with open(f"{base}.kv", "wb") as f:
        f.write(memoryview(data).cast("B"))
    meta = {"transfer_id": transfer_id, "crc32": crc32, "num_tokens": num_tokens, "layout": layout,
            "expires_unix_s": expires_unix_s}
    tmp = f"{base}.json.tmp"
    Path(tmp).write_text(json.dumps(meta))
    os.replace(tmp, f"{base}.json")


def data_path(directory: str, transfer_id: str) -> str:
    return str(Path(directory) / f"{transfer_id}.kv")


def complete_ids(directory: str) -> list[str]:
    return [p.name[:-5] for p in Path(directory).glob("*.json")]


def load(directory: str, transfer_id: str) -> Staged | None:
    """The staged transfer, mapped; None when it is not (or no longer, or not wholly) there."""
    if not valid_id(transfer_id):
        return None
    base = Path(directory) / transfer_id
    try:
        meta = json.loads(Path(f"{base}.json").read_text())
        with open(f"{base}.kv", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else None
    except (OSError, ValueError):
        return None
    block_bytes = int(meta["layout"]["block_bytes"])
    n = len(meta["crc32"])
    if mapped is None or size != n * block_bytes:
        remove(directory, transfer_id)
        return None
    view = memoryview(mapped)
    blocks = [view[i * block_bytes:(i + 1) * block_bytes] for i in range(n)]

    def release() -> None:
        blocks.clear()
        try:
            view.release()
            mapped.close()
        except BufferError:  # a send still holds a block; the mapping goes when it lets go
            pass
        remove(directory, transfer_id)

    return Staged(transfer_id, blocks, meta["crc32"], int(meta["num_tokens"]), meta["layout"],
                  float(meta["expires_unix_s"]), release=release)


def remove(directory: str, transfer_id: str) -> None:
    base = Path(directory) / transfer_id
    for suffix in (".json", ".kv", ".json.tmp"):
        try:
            os.unlink(f"{base}{suffix}")
        except FileNotFoundError:
            pass


def remove_orphans(root: str) -> list[str]:
    """Remove staging folders (`hfx-kv-<pid>-*`) whose worker process is gone; returns them."""
    import shutil

    removed = []
    for path in Path(root).glob("hfx-kv-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or procs.alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed

