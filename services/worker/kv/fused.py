"""Copy KV blocks and compute each one's CRC32 in one pass over the bytes: each 16 or 64 bytes are
loaded once from P's shared memory, stored once into D's buffer, and folded into the block's
CRC32 from that same register (carry-less multiplication: PCLMULQDQ, or VPCLMULQDQ on AVX-512),
so the CRC32 is of exactly what D stored, not of a second read of P's memory. A same-host pull
(samehost.py) does this instead of a copy and a CRC32 pass per piece: the bytes cross the memory
bus once each way (streaming stores for large runs), and a run of blocks costs one call from
Python instead of a handful per block. Measured in BENCHMARKS.md (issue 10, fifth pass).

The loops are LLVM IR compiled for this CPU at first use by llvmlite (which vLLM brings through
numba; ~0.1-0.25 s, started while the engine starts, connector.register_kv_caches), checked
against zlib's CRC32 on sample blocks before use. Without llvmlite, without PCLMULQDQ, or when
that check fails, `copier()` is None and the pull copies and checks in two passes as before.

The folding constants are zlib's polynomial's (reflected 0xEDB88320), x^(d+-32) mod P for lanes
d bits apart, as in Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ" and
Linux's crc32-pclmul; the last 128 bits are reduced bit by bit (a few hundred cycles a block,
against ~15 us to move a 256 KiB block).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("hfx.worker.kv")

# Blocks this function takes: a multiple of 64 bytes (the lanes), 64 or more.
LANES_BYTES = 64

# Stores that bypass the caches (MOVNTDQ) for runs at least this long: a run this large does not
# stay in cache for the connector's scatter anyway, and plain stores first read each destination
# line (the destination crosses the bus twice). Below it, plain stores leave the blocks in cache
# for the scatter that follows.
STREAM_BYTES = 8 << 20

_K4 = "<i64 5708721108, i64 7631803798>"  # x^(4*128+32), x^(4*128-32) mod P, reflected (0x154442bd4, 0x1c6e41596)
_K1 = "<i64 6259578832, i64 3433693342>"  # x^(128+32), x^(128-32) mod P, reflected (0x1751997d0, 0x0ccaa009e)
_K16 = "<" + ", ".join(["i64 4651644810, i64 5136782384"] * 4) + ">"  # x^(2048+32), x^(2048-32) (0x11542778a, 0x1322d1430)

_COMMON = """
declare <2 x i64> @llvm.x86.pclmulqdq(<2 x i64>, <2 x i64>, i8)
declare void @llvm.x86.sse.sfence()

; x's two halves multiplied by k's (x.lo * k.lo ^ x.hi * k.hi): x moved 128 bits on, plus d
define internal <2 x i64> @fold(<2 x i64> %x, <2 x i64> %k, <2 x i64> %d) alwaysinline {
  %a = call <2 x i64> @llvm.x86.pclmulqdq(<2 x i64> %x, <2 x i64> %k, i8 0)
  %b = call <2 x i64> @llvm.x86.pclmulqdq(<2 x i64> %x, <2 x i64> %k, i8 17)
  %ab = xor <2 x i64> %a, %b
  %r = xor <2 x i64> %ab, %d
  ret <2 x i64> %r
}

; the CRC32 of the 16 bytes of x with the register starting at 0, bit by bit, complemented
define internal i32 @finish(<2 x i64> %x) alwaysinline {
entry:
  %lo = extractelement <2 x i64> %x, i32 0
  %hi = extractelement <2 x i64> %x, i32 1
  br label %bit
bit:
  %k = phi i64 [0, %entry], [%k.next, %bit]
  %reg = phi i32 [0, %entry], [%reg.next, %bit]
  %first = icmp ult i64 %k, 64
  %w = select i1 %first, i64 %lo, i64 %hi
  %sh = and i64 %k, 63
  %ws = lshr i64 %w, %sh
  %b64 = and i64 %ws, 1
  %b = trunc i64 %b64 to i32
  %t = xor i32 %reg, %b
  %t1 = and i32 %t, 1
  %mask = sub i32 0, %t1
  %poly = and i32 %mask, 3988292384
  %r1 = lshr i32 %reg, 1
  %reg.next = xor i32 %r1, %poly
  %k.next = add i64 %k, 1
  %more = icmp ult i64 %k.next, 128
  br i1 %more, label %bit, label %end
end:
  %crc = xor i32 %reg.next, -1
  ret i32 %crc
}
"""

# One function per register width and kind of store: copy `nblocks` blocks of `block` bytes from
# src to dst and write each one's CRC32 (zlib's, initial value 0) to out[i]. The first 16 bytes get
# the register's initial value (0xFFFFFFFF) xored in; four lanes, each one register wide, fold a
# register's width x 4 bytes on per step; at the block's end they fold into one 128-bit value,
# whose CRC32 is the block's. 128-bit: four 16-byte lanes, 64 bytes a step. 512-bit (VPCLMULQDQ on
# AVX-512): four 64-byte lanes, 256 bytes a step, a quarter of the steps, for blocks of whole
# 256 bytes on CPUs that have it.
_LOOP = """
define internal {vec} @{move}_{name}(ptr %dst, ptr %src, i64 %at) alwaysinline {{
  %s = getelementptr i8, ptr %src, i64 %at
  %d = getelementptr i8, ptr %dst, i64 %at
  %v = load {vec}, ptr %s, align 1
  store {vec} %v, ptr %d, {store}
  ret {vec} %v
}}

define void @{function}_{name}(ptr %dst, ptr %src, i64 %nblocks, i64 %block, ptr %out) {{
entry:
  %any = icmp sgt i64 %nblocks, 0
  br i1 %any, label %blk, label %done
blk:
  %bi = phi i64 [0, %entry], [%bi.next, %blk.end]
  %off = mul i64 %bi, %block
  %s = getelementptr i8, ptr %src, i64 %off
  %d = getelementptr i8, ptr %dst, i64 %off
  %a1 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 0)
  %a2 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 {lane1})
  %a3 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 {lane2})
  %a4 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 {lane3})
  %a1x = xor {vec} %a1, {init}
  %big = icmp ugt i64 %block, {step}
  br i1 %big, label %loop, label %tail
loop:
  %i = phi i64 [{step}, %blk], [%i.next, %loop]
  %x1 = phi {vec} [%a1x, %blk], [%n1, %loop]
  %x2 = phi {vec} [%a2, %blk], [%n2, %loop]
  %x3 = phi {vec} [%a3, %blk], [%n3, %loop]
  %x4 = phi {vec} [%a4, %blk], [%n4, %loop]
  %j1 = add i64 %i, {lane1}
  %j2 = add i64 %i, {lane2}
  %j3 = add i64 %i, {lane3}
  %v1 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 %i)
  %v2 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 %j1)
  %v3 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 %j2)
  %v4 = call {vec} @{move}_{name}(ptr %d, ptr %s, i64 %j3)
  %n1 = call {vec} @{fold}({vec} %x1, {vec} {k}, {vec} %v1)
  %n2 = call {vec} @{fold}({vec} %x2, {vec} {k}, {vec} %v2)
  %n3 = call {vec} @{fold}({vec} %x3, {vec} {k}, {vec} %v3)
  %n4 = call {vec} @{fold}({vec} %x4, {vec} {k}, {vec} %v4)
  %i.next = add i64 %i, {step}
  %more = icmp ult i64 %i.next, %block
  br i1 %more, label %loop, label %tail
tail:
  %y1 = phi {vec} [%a1x, %blk], [%n1, %loop]
  %y2 = phi {vec} [%a2, %blk], [%n2, %loop]
  %y3 = phi {vec} [%a3, %blk], [%n3, %loop]
  %y4 = phi {vec} [%a4, %blk], [%n4, %loop]
{reduce}
  %crc = call i32 @finish(<2 x i64> %z4)
  %o = getelementptr i32, ptr %out, i64 %bi
  store i32 %crc, ptr %o, align 4
  br label %blk.end
blk.end:
  %bi.next = add i64 %bi, 1
  %again = icmp ult i64 %bi.next, %nblocks
  br i1 %again, label %blk, label %fin
fin:
  {fence}
  br label %done
done:
  ret void
}}
"""

# The four lanes' registers into one 128-bit value %z4, by width. (@lanes from 0 starts with the
# register's lowest part: a fold of 0 is 0.)
_REDUCE_128 = """  %z2 = call <2 x i64> @fold(<2 x i64> %y1, <2 x i64> {k1}, <2 x i64> %y2)
  %z3 = call <2 x i64> @fold(<2 x i64> %z2, <2 x i64> {k1}, <2 x i64> %y3)
  %z4 = call <2 x i64> @fold(<2 x i64> %z3, <2 x i64> {k1}, <2 x i64> %y4)"""
_REDUCE_512 = """  %z1 = call <2 x i64> @lanes(<2 x i64> zeroinitializer, <8 x i64> %y1)
  %z2 = call <2 x i64> @lanes(<2 x i64> %z1, <8 x i64> %y2)
  %z3 = call <2 x i64> @lanes(<2 x i64> %z2, <8 x i64> %y3)
  %z4 = call <2 x i64> @lanes(<2 x i64> %z3, <8 x i64> %y4)"""

@dataclass(frozen=True)
class _Width:
    """One register width's loop: register type, move and fold helpers, lane bytes, the
    fold-by-four-lanes constant, the initial value xored into the first register, the reduction."""
    vec: str
    move: str
    function: str
    fold: str
    lane: int
    k: str
    init: str
    reduce: str


_WIDTHS = {
    False: _Width("<2 x i64>", "move", "copy_crc32", "fold", 16, _K4, "<i64 4294967295, i64 0>", _REDUCE_128),
    True: _Width("<8 x i64>", "movez", "copy_crc32_wide", "foldz", 64, _K16, "<i64 4294967295" + ", i64 0" * 7 + ">",
                 _REDUCE_512),
}


def _loop(wide: bool, name: str, store: str, fence: str) -> str:
    w = _WIDTHS[wide]
    return _LOOP.format(name=name, store=store, fence=fence, vec=w.vec, move=w.move, function=w.function,
                        fold=w.fold, k=w.k, init=w.init, lane1=w.lane, lane2=2 * w.lane, lane3=3 * w.lane,
                        step=4 * w.lane, reduce=w.reduce.format(k1=_K1))


# The 512-bit loop's helpers: its fold, and one register's four 128-bit parts folded into x.
_WIDE_COMMON = """declare <8 x i64> @llvm.x86.pclmulqdq.512(<8 x i64>, <8 x i64>, i8)

define internal <8 x i64> @foldz(<8 x i64> %x, <8 x i64> %k, <8 x i64> %d) alwaysinline {{
  %a = call <8 x i64> @llvm.x86.pclmulqdq.512(<8 x i64> %x, <8 x i64> %k, i8 0)
  %b = call <8 x i64> @llvm.x86.pclmulqdq.512(<8 x i64> %x, <8 x i64> %k, i8 17)
  %ab = xor <8 x i64> %a, %b
  %r = xor <8 x i64> %ab, %d
  ret <8 x i64> %r
}}

define internal <2 x i64> @lanes(<2 x i64> %x, <8 x i64> %z) alwaysinline {{
  %l0 = shufflevector <8 x i64> %z, <8 x i64> poison, <2 x i32> <i32 0, i32 1>
  %l1 = shufflevector <8 x i64> %z, <8 x i64> poison, <2 x i32> <i32 2, i32 3>
  %l2 = shufflevector <8 x i64> %z, <8 x i64> poison, <2 x i32> <i32 4, i32 5>
  %l3 = shufflevector <8 x i64> %z, <8 x i64> poison, <2 x i32> <i32 6, i32 7>
  %f0 = call <2 x i64> @fold(<2 x i64> %x, <2 x i64> {k1}, <2 x i64> %l0)
  %f1 = call <2 x i64> @fold(<2 x i64> %f0, <2 x i64> {k1}, <2 x i64> %l1)
  %f2 = call <2 x i64> @fold(<2 x i64> %f1, <2 x i64> {k1}, <2 x i64> %l2)
  %f3 = call <2 x i64> @fold(<2 x i64> %f2, <2 x i64> {k1}, <2 x i64> %l3)
  ret <2 x i64> %f3
}}
"""

# Plain stores; streaming stores (16-byte aligned destination; ordered before the call returns).
_VARIANTS = {"plain": ("align 1", ""),
             "stream": ("align 16, !nontemporal !0", "call void @llvm.x86.sse.sfence()")}

# (dst address, src address, blocks, block bytes, out address); holds the GIL (a same-host pull
# copies under it, samehost.py), so a caller bounds how much one call moves.
_Fn = Callable[..., None]

WIDE_BYTES = 256  # blocks of a multiple of this take the 512-bit loop where the CPU has one


class Copier:
    """The compiled functions by (wide, streaming); keeps the JIT engine (their code) alive."""

    def __init__(self, engine, fns: dict[tuple[bool, bool], _Fn]) -> None:
        self._engine = engine
        self._fns = fns

    def pick(self, block_bytes: int, nbytes: int, dst_address: int) -> _Fn:
        wide = block_bytes % WIDE_BYTES == 0 and (True, False) in self._fns
        return self._fns[wide, nbytes >= STREAM_BYTES and dst_address % 16 == 0]

    def __call__(self, dst: np.ndarray, src: np.ndarray, block_bytes: int, out: np.ndarray) -> None:
        """dst[:] = src (uint8, same length, whole blocks of block_bytes, a multiple of LANES_BYTES)
        and out[i] = CRC32 of block i of dst (uint32, one per block)."""
        nblocks = len(dst) // block_bytes if block_bytes > 0 else 0
        if len(src) != len(dst) or not usable(block_bytes) or nblocks * block_bytes != len(dst) \
                or len(out) < nblocks or out.dtype != np.uint32 or not dst.flags.writeable or not out.flags.writeable:
            raise ValueError(f"copy of {len(src)} bytes into {len(dst)} in blocks of {block_bytes}")
        address = dst.ctypes.data
        self.pick(block_bytes, len(dst), address)(address, src.ctypes.data, nblocks, block_bytes, out.ctypes.data)


def usable(block_bytes: int) -> bool:
    return block_bytes >= LANES_BYTES and block_bytes % LANES_BYTES == 0


_lock = threading.Lock()
_built: list[Copier | None] = []


def copier() -> Copier | None:
    """The one-pass copy + CRC32, compiled and checked on first call; None where it cannot run."""
    with _lock:
        if not _built:
            _built.append(_build())
        return _built[0]


def _build() -> Copier | None:
    try:
        import llvmlite.binding as llvm  # type: ignore[import-untyped]  # vLLM brings it (numba); no type information
    except ImportError:
        log.info("KV copy: llvmlite not installed; same-host pulls copy, then check")
        return None
    try:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        features = llvm.get_host_cpu_features()
        if not features.get("pclmul") or not features.get("sse2"):
            log.info("KV copy: no PCLMULQDQ on this CPU; same-host pulls copy, then check")
            return None
        wide = bool(features.get("vpclmulqdq") and features.get("avx512f"))
        ir = _COMMON + (_WIDE_COMMON.format(k1=_K1) if wide else "") + "".join(
            _loop(w, name, store, fence) for w in ((False, True) if wide else (False,))
            for name, (store, fence) in _VARIANTS.items())
        ir += "\n!0 = !{i32 1}\n"
        target = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=features.flatten(), opt=3)
        module = llvm.parse_assembly(ir)
        module.verify()
        builder = llvm.create_pass_builder(target, llvm.create_pipeline_tuning_options(speed_level=3, size_level=0))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, target)
        engine.finalize_object()
        signature = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p)
        fns: dict[tuple[bool, bool], _Fn] = {}
        for w in (False, True) if wide else (False,):
            for name in _VARIANTS:
                address = engine.get_function_address(f"copy_crc32_{'wide_' if w else ''}{name}")
                fns[w, name == "stream"] = signature(address)
        built = Copier(engine, fns)
    except Exception as err:  # an LLVM that refuses the IR or the CPU: the two-pass copy still works
        log.warning("KV copy: one-pass copy + CRC32 unavailable (%s); same-host pulls copy, then check", err)
        return None
    if not _agrees(built):
        log.warning("KV copy: one-pass CRC32 disagrees with zlib's; same-host pulls copy, then check")
        return None
    return built


def _agrees(built: Copier) -> bool:
    """Same bytes and the same CRC32s as zlib's from every compiled loop, for blocks of one lane
    and of many, from an unaligned source into a destination aligned to 16 bytes but not 64."""
    rng = np.random.default_rng()
    for block_bytes, nblocks in ((64, 3), (192, 2), (256, 2), (4096, 3)):
        src = rng.integers(0, 256, block_bytes * nblocks + 1, dtype=np.uint8)[1:]
        want = [zlib.crc32(src[i * block_bytes:(i + 1) * block_bytes].tobytes()) for i in range(nblocks)]
        for (wide, _), fn in built._fns.items():
            if wide and block_bytes % WIDE_BYTES:
                continue
            room = np.zeros(len(src) + 64, np.uint8)
            at = (16 - room.ctypes.data) % 64
            dst, out = room[at:at + len(src)], np.zeros(nblocks, np.uint32)
            fn(dst.ctypes.data, src.ctypes.data, nblocks, block_bytes, out.ctypes.data)
            if not (dst == src).all() or out.tolist() != want:
                return False
    return True
