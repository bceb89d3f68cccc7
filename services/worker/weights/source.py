"""The donor's copy of the checkpoint, in its own memory, in checkpoint format.

Why a copy: vLLM's CPU backend repacks every linear layer's weight after loading into a oneDNN
(or sgl-kernel) handle and empties the parameter (`dispatch_cpu_unquantized_gemm`, remove_weight),
and no operator reads a packed weight back out, so a serving engine cannot hand its weights to
another engine on this device. The donor worker therefore reads the checkpoint once at start
(the engine has just read the same files, so the page cache usually serves it) into anonymous
memory, computes each tensor's CRC32, and streams from there while its engine keeps serving.
Cost: the checkpoint's size in host memory per donor, counted as `nbytes`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from services.worker.weights import checkpoint
from services.worker.weights.checkpoint import TensorInfo


@dataclass(frozen=True)
class Entry:
    info: TensorInfo
    crc32: int
    data: memoryview            # info.nbytes bytes


class WeightSource(Protocol):
    """What a donor streams: the identity, then the tensors in a fixed order."""

    identity: str
    total_bytes: int
    tensor_count: int

    def entries(self) -> Iterator[Entry]: ...


class CheckpointSource:
    """Every tensor of a checkpoint held in this process's memory, with its checksum."""

    def __init__(self, identity: str, entries: list[Entry], buffers: list[bytearray]) -> None:
        self.identity = identity
        self._entries = entries
        self._buffers = buffers  # keeps the memory the entries' views point into
        self.total_bytes = sum(e.info.nbytes for e in entries)
        self.tensor_count = len(entries)
        self.nbytes = sum(len(b) for b in buffers)

    @classmethod
    def load(cls, model_dir: Path) -> CheckpointSource:
        """Read every weight file of `model_dir` whole into memory (one read per file)."""
        model_dir = Path(model_dir)
        entries: list[Entry] = []
        buffers: list[bytearray] = []
        index: list[TensorInfo] = []
        for path in checkpoint.weight_files(model_dir):
            buf = bytearray(path.stat().st_size)
            with open(path, "rb", buffering=0) as f:
                view, got = memoryview(buf), 0
                while got < len(buf):
                    n = f.readinto(view[got:])
                    if not n:
                        raise checkpoint.CheckpointError(f"{path}: shorter than its size")
                    got += n
            buffers.append(buf)
            _, tensors = checkpoint.parse_header(buf, path.name)
            for info in sorted(tensors, key=lambda t: t.begin):
                if info.end > len(buf):
                    raise checkpoint.CheckpointError(f"{path}: {info.name} runs past the end of the file")
                data = memoryview(buf)[info.begin:info.end]
                entries.append(Entry(info, zlib.crc32(data), data))
                index.append(info)
        return cls(checkpoint.identity(model_dir, index), entries, buffers)

    def entries(self) -> Iterator[Entry]:
        return iter(self._entries)
