"""CRC32 (zlib's polynomial) for every byte stream that checks its payload: weights and KV blocks.

ISA-L's crc32 runs at ~30 GB/s here against zlib's ~3.5 GB/s, so checking every tensor or block
does not dominate a transfer. Both give the same value, so peers with and without ISA-L agree.
"""

from __future__ import annotations

try:  # crc32(data, value=0): the CRC32 of a bytes-like object (a memoryview over a tensor or a mapped
    # page range: no copy); `value`: the CRC32 of the bytes before `data`, to checksum piece by piece.
    # The C function itself, not a wrapper: a same-host KV pull calls it once per 256 KiB.
    from isal.isal_zlib import crc32
except ImportError:  # an environment installed without it: same checksums, ~8x slower
    from zlib import crc32

__all__ = ["crc32"]
