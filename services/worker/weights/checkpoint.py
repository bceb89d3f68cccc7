"""A safetensors checkpoint's tensor index and the model identity derived from it.

Identity = sha256 over the checkpoint's config.json and its tensor index (name, dtype, shape of
every tensor, in name order). Donor and receiver compute it from their own copies; a stream whose
identity differs from the receiver's is refused before any tensor is loaded. Reading the index
touches only each file's header (a few KiB), never the tensor data.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors dtype names -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class CheckpointError(ValueError):
    """The directory is not a readable safetensors checkpoint."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str                  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]
    file: str                   # file name inside the checkpoint directory
    begin: int                  # byte offset of the data inside the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {model_dir}")
    return files


def parse_header(blob: bytes | bytearray | mmap.mmap, file_name: str) -> tuple[int, list[TensorInfo]]:
    """(data offset, tensors) from the first bytes of a safetensors file (at least its header)."""
    if len(blob) < 8:
        raise CheckpointError(f"{file_name}: too short for a safetensors header")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > 100 * 1024 * 1024 or len(blob) < 8 + size:
        raise CheckpointError(f"{file_name}: bad or truncated header ({size} bytes)")
    header = json.loads(bytes(blob[8:8 + size]))
    base = 8 + size
    tensors = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        expected = DTYPE_BYTES[dtype]
        for dim in shape:
            expected *= dim
        if end - begin != expected:
            raise CheckpointError(f"{file_name}: {name} spans {end - begin} bytes, its shape needs {expected}")
        tensors.append(TensorInfo(name, dtype, shape, file_name, base + begin, base + end))
    return base, tensors


def read_index(model_dir: Path) -> list[TensorInfo]:
    """Every tensor of the checkpoint, in file order then offset order (the order they stream in)."""
    out: list[TensorInfo] = []
    for path in weight_files(model_dir):
        with open(path, "rb") as f:
            head = f.read(8)
            (size,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            _, tensors = parse_header(head + f.read(size), path.name)
        out.extend(sorted(tensors, key=lambda t: t.begin))
    return out


def identity(model_dir: Path, index: list[TensorInfo] | None = None) -> str:
    """The model identity hash (hex) of the checkpoint in `model_dir`."""
    model_dir = Path(model_dir)
    index = index if index is not None else read_index(model_dir)
    digest = hashlib.sha256()
    config = model_dir / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for t in sorted(index, key=lambda t: t.name):
        digest.update(json.dumps([t.name, t.dtype, list(t.shape)]).encode())
    return digest.hexdigest()
