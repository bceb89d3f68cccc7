"""Staged KV in shared memory: the engine's worker process writes each transfer's blocks here,
the worker service (a process that does not spin holding the GIL, as vLLM's engine processes do)
maps and serves them.

One transfer = its blocks back to back, each `block_bytes`, in a region of the folder's arena
(arena.py; `arena_offset` in the JSON) or, when the arena is full or absent, in `<id>.kv`; and
`<id>.json` (CRC32 per block, tokens, layout, lease expiry), renamed into place last: a transfer
whose JSON is there is complete, and one whose JSON is gone is freed (its region reusable).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from pathlib import Path

from services.common import procs
from services.worker.kv import arena
from services.worker.kv.store import Staged

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def valid_id(transfer_id: str) -> bool:
    return bool(_ID.match(transfer_id)) and not transfer_id.startswith(".")


def write(directory: str, transfer_id: str, data, crc32: list[int], num_tokens: int, layout: dict,
          expires_unix_s: float, arena_offset: int | None = None) -> None:
    """`data`: a buffer of len(crc32) blocks of layout["block_bytes"] each; with `arena_offset`,
    the blocks are in the arena there already (ArenaStager.region) and `data` is not read."""
    base = Path(directory) / transfer_id
    meta = {"transfer_id": transfer_id, "crc32": crc32, "num_tokens": num_tokens, "layout": layout,
            "expires_unix_s": expires_unix_s}
    if arena_offset is None:
        with open(f"{base}.kv", "wb") as f:
            f.write(memoryview(data).cast("B"))
    else:
        meta["arena_offset"] = arena_offset
    tmp = f"{base}.json.tmp"
    Path(tmp).write_text(json.dumps(meta))
    os.replace(tmp, f"{base}.json")


class ArenaStager:
    """The writer's side of a folder's arena: a region per transfer, back to the allocator once
    the transfer's JSON is gone (the server freed it). One writer per arena; not thread-safe."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.view = arena.mapped(arena.path(directory), writable=True)
        self.allocator = arena.Allocator(len(self.view))

    def region(self, transfer_id: str, nbytes: int):
        """(offset, writable uint8 array of nbytes) for `transfer_id`, or None when full."""
        for held in self.allocator.held():
            if not os.path.exists(meta_path(self.directory, held)):
                self.allocator.free(held)
        offset = self.allocator.reserve(transfer_id, nbytes)
        return None if offset is None else (offset, self.view[offset:offset + nbytes])

    def abandon(self, transfer_id: str) -> None:
        """A region reserved but never published (staging failed)."""
        self.allocator.free(transfer_id)


def location(staged: Staged) -> dict:
    """Where a reader on this host finds a staged transfer's blocks (the server's locate answer)."""
    return {"ok": True, "path": staged.path, "offset": staged.offset, "arena": staged.in_arena,
            "crc32": list(staged.crc32), "num_tokens": staged.num_tokens, "layout": staged.layout,
            "blocks": len(staged.blocks)}


def read_location(directory: str, transfer_id: str) -> dict | None:
    """The same answer read from the folder's metadata by a reader on this host, without asking
    the server; None when the transfer is not (or no longer) there."""
    meta = _read_meta(directory, transfer_id)
    if meta is None:
        return None
    try:
        in_arena = "arena_offset" in meta
        return {"ok": True, "path": arena.path(directory) if in_arena else os.path.join(directory, f"{transfer_id}.kv"),
                "offset": int(meta.get("arena_offset", 0)), "arena": in_arena, "crc32": meta["crc32"],
                "num_tokens": int(meta["num_tokens"]), "layout": meta["layout"], "blocks": len(meta["crc32"])}
    except (ValueError, KeyError, TypeError):  # not what write() writes
        return None


def still_staged(directory: str, transfer_id: str) -> bool:
    """Whether the transfer's metadata is still in the folder: P has not freed it, so its region
    has not been handed out again (ArenaStager.region frees only regions whose metadata is gone)."""
    return valid_id(transfer_id) and os.path.exists(meta_path(directory, transfer_id))


def meta_path(directory: str, transfer_id: str) -> str:
    return os.path.join(directory, f"{transfer_id}.json")


def _read_meta(directory: str, transfer_id: str) -> dict | None:
    """The transfer's metadata; None when it is not (or no longer) there or not a JSON object. On a decode
    worker's pull path, so plain system calls: open, a read (more only past 64 KiB), close; with
    the caches cold after a large copy, pathlib's read_text took twice as long here."""
    if not valid_id(transfer_id):
        return None
    try:
        fd = os.open(meta_path(directory, transfer_id), os.O_RDONLY)
    except OSError:
        return None
    try:
        parts = [os.read(fd, _READ_BYTES)]
        while len(parts[-1]) == _READ_BYTES:
            parts.append(os.read(fd, _READ_BYTES))
        meta = json.loads(b"".join(parts))
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


_READ_BYTES = 1 << 16


def complete_ids(directory: str) -> list[str]:
    return [p.name[:-5] for p in Path(directory).glob("*.json")]


def load(directory: str, transfer_id: str) -> Staged | None:
    """The staged transfer, mapped; None when it is not (or no longer, or not wholly) there."""
    meta = _read_meta(directory, transfer_id)
    if meta is None:
        return None
    base = os.path.join(directory, transfer_id)
    try:
        block_bytes = int(meta["layout"]["block_bytes"])
        n = len(meta["crc32"])
        if "arena_offset" in meta:
            return _load_from_arena(directory, transfer_id, meta, int(meta["arena_offset"]), n * block_bytes)
        with open(f"{base}.kv", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
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
                  float(meta["expires_unix_s"]), release=release, path=f"{base}.kv")


def _load_from_arena(directory: str, transfer_id: str, meta: dict, offset: int, nbytes: int) -> Staged | None:
    region = arena.mapped(arena.path(directory))
    if offset < 0 or offset + nbytes > len(region):
        remove(directory, transfer_id)
        return None
    view = region[offset:offset + nbytes].data
    block_bytes = int(meta["layout"]["block_bytes"])
    blocks = [view[i * block_bytes:(i + 1) * block_bytes] for i in range(len(meta["crc32"]))]
    return Staged(transfer_id, blocks, meta["crc32"], int(meta["num_tokens"]), meta["layout"],
                  float(meta["expires_unix_s"]), release=lambda: remove(directory, transfer_id),
                  path=arena.path(directory), offset=offset, in_arena=True)


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

