"""Donor sources that misbehave on purpose, and a byte-level safetensors writer, for the weight
stream's tests (unit: tests/unit/test_weight_stream.py; real vLLM: tests/integration/test_d2d_weights.py)."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

from services.worker.weights.source import Entry


def write_checkpoint(out: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], config: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    body = json.dumps(header).encode()
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + b"".join(blobs))
    (out / "config.json").write_text(json.dumps(config or {"hidden_size": 4}))
    return out


class ListSource:
    """A donor source built from entries (altered per test)."""

    def __init__(self, identity: str, entries: list[Entry]) -> None:
        self.identity, self._entries = identity, entries
        self.total_bytes = sum(e.info.nbytes for e in entries)
        self.tensor_count = len(entries)

    def entries(self):
        return iter(self._entries)


class DyingSource(ListSource):
    """Dies after `after` tensors, as a donor process killed mid-stream."""

    def __init__(self, identity, entries, after: int) -> None:
        super().__init__(identity, entries)
        self.after = after

    def entries(self):
        for i, e in enumerate(self._entries):
            if i == self.after:
                raise RuntimeError("donor died")
            yield e




def corrupt_one(entries: list[Entry], position: int) -> list[Entry]:
    """Flip one bit of one tensor's bytes, keeping its true CRC32 in the header."""
    entries = list(entries)
    bad = bytearray(entries[position].data)
    bad[len(bad) // 2] ^= 0x01
    entries[position] = replace(entries[position], data=memoryview(bad))
    return entries


def rolled(entries: list[Entry], itemsize: int = 2) -> list[Entry]:
    """Every tensor's elements shifted by one place, with matching CRC32s: a well-formed stream of
    the wrong weights (what a test uses to spoil an engine's weights before checking a reload)."""
    out = []
    for e in entries:
        data = bytes(e.data)
        data = data[-itemsize:] + data[:-itemsize]
        out.append(replace(e, data=memoryview(data), crc32=zlib.crc32(data)))
    return out
