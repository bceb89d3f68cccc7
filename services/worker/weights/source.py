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

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from services.common.checksum import crc32
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


@runtime_checkable
class SharedMemorySource(WeightSource, Protocol):
    """A source whose weight files are memfds (Linux; an empty `fds` where the OS has none): a
    receiver on this host maps them instead of reading a stream (the shm transport)."""

    fds: list[int]
    file_index: dict[str, int]   # weight file name -> its position in fds


class CheckpointSource:
    """Every tensor of a checkpoint held in this process's memory, with its checksum."""

    def __init__(self, identity: str, entries: list[Entry], buffers: list, fds: list[int] | None = None,
                 file_index: dict[str, int] | None = None) -> None:
        self.identity = identity
        self._entries = entries
        self._buffers = buffers  # keeps the memory the entries' views point into
        # One memfd per weight file (Linux): a receiver on this host can map the same pages
        # instead of reading a stream (the shm transport); file_index: weight file name -> fd position.
        self.fds = fds or []
        self.file_index = file_index or {}
        self.total_bytes = sum(e.info.nbytes for e in entries)
        self.tensor_count = len(entries)
        self.nbytes = sum(len(b) for b in buffers)

    @classmethod
    def load(cls, model_dir: Path) -> CheckpointSource:
        """Read every weight file of `model_dir` whole into memory (one read per file), into
        memfd-backed shared memory where the OS has it, else into a bytearray."""
        model_dir = Path(model_dir)
        entries: list[Entry] = []
        buffers: list = []
        fds: list[int] = []
        file_index: dict[str, int] = {}
        index: list[TensorInfo] = []
        for path in checkpoint.weight_files(model_dir):
            size = path.stat().st_size
            buf: mmap.mmap | bytearray
            if hasattr(os, "memfd_create") and size > 0:
                fd = os.memfd_create(f"hfx-weights-{path.name}", os.MFD_CLOEXEC)
                os.ftruncate(fd, size)
                buf = mmap.mmap(fd, size)
                file_index[path.name] = len(fds)
                fds.append(fd)
            else:
                buf = bytearray(size)
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
                entries.append(Entry(info, crc32(data), data))
                index.append(info)
        return cls(checkpoint.identity(model_dir, index), entries, buffers, fds, file_index)

    def entries(self) -> Iterator[Entry]:
        return iter(self._entries)
