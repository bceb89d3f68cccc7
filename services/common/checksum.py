"""CRC32 (zlib's polynomial) for every byte stream that checks its payload: weights and KV blocks.

ISA-L's crc32 runs at ~30 GB/s here against zlib's ~3.5 GB/s, so checking every tensor or block
does not dominate a transfer. Both give the same value, so peers with and without ISA-L agree.

isal_zlib.crc32 holds the GIL while it runs, so a checksum and a copy (numpy lets go of the GIL)
or a second checksum in another thread take turns. Large buffers therefore go to the same ISA-L
routine (`crc32_gzip_refl`, exported by python-isal's extension module) through ctypes, which
lets go of the GIL for the call: a transfer can check one part while it copies or maps the next
on another core. Where that symbol is missing or disagrees with zlib on a probe, every call
takes isal_zlib.crc32 (or zlib's) as before.
"""

from __future__ import annotations

import ctypes
import zlib

import numpy as np

try:
    from isal import isal_zlib
    _crc32 = isal_zlib.crc32
except ImportError:  # an environment installed without it: same checksums, ~8x slower
    isal_zlib = None
    _crc32 = zlib.crc32

# Below this, ctypes' ~2 us per call costs more than holding the GIL does.
UNLOCKED_MIN_BYTES = 1 << 20


def _isal_unlocked():
    if isal_zlib is None:
        return None
    try:
        fn = ctypes.CDLL(isal_zlib.__file__).crc32_gzip_refl
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64]
    probe = bytes(range(256)) * 17
    buf = np.frombuffer(probe, dtype=np.uint8)
    if fn(7, buf.ctypes.data, len(probe)) != zlib.crc32(probe, 7):
        return None
    return fn


_unlocked = _isal_unlocked()


def crc32(data, value: int = 0) -> int:
    """CRC32 of a bytes-like object (a memoryview over a tensor or a mapped page range: no copy),
    continuing from `value`; without the GIL when it is large."""
    view = memoryview(data)
    if _unlocked is None or view.nbytes < UNLOCKED_MIN_BYTES:
        return _crc32(view, value)
    buf = np.frombuffer(view, dtype=np.uint8)
    return int(_unlocked(value, buf.ctypes.data, buf.nbytes))


def crc32_blocks(data, block_bytes: int) -> list[int]:
    """The CRC32 of each `block_bytes` block of `data` (back to back), without the GIL while each
    runs where the ctypes route is there."""
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    count = buf.nbytes // block_bytes
    if _unlocked is None:
        return [_crc32(buf[j * block_bytes:(j + 1) * block_bytes]) for j in range(count)]
    base = buf.ctypes.data
    return [int(_unlocked(0, base + j * block_bytes, block_bytes)) for j in range(count)]
