"""HFX's vLLM KV connector (KVConnectorBase_V1), loaded by module path; kv_role "kv_both".

Prefill worker (a request with kv_transfer_params {do_remote_decode}): when the request finishes
(max_tokens 1), `request_finished` keeps its blocks (delay free), names a transfer and returns
{remote_address, transfer_id, num_tokens, lease_expiry_unix_s}; on the next step the worker side
copies the blocks (all layers) into the staging store under a lease and reports them sent, so
vLLM frees its blocks at once: D reads the staged copy, never blocks vLLM may reuse.

Decode worker (a request with {do_remote_prefill, remote_address, transfer_id, num_tokens}): the
scheduler side asks for the staged tokens as an asynchronous external load; the worker side pulls
them on a thread (deadline, per-block CRC32), writes them into the request's blocks only when
every block checked out, and reports the load finished. Any failure reports the load failed, and
vLLM (kv_load_failure_policy "recompute") computes the prefill itself: never tokens from bad KV.

Runs in vLLM's processes (scheduler side in the engine core, worker side beside the KV cache); it
logs there. The staged blocks go to shared memory (shm.py) and the worker service's own process
serves them (tcp.KvServer): vLLM's worker process spins holding the GIL between steps
(os.sched_yield keeps it), which starved a server thread there for seconds on 2 cores. CPU KV layout (CPUAttentionBackend): per layer [num_blocks, num_kv_heads, block_size,
2 * head_size], so one block of one layer is contiguous; a staged block is that, for every layer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
)
from vllm.v1.request import RequestStatus

from services.worker.kv import buffers, fused, samehost, shm, tcp, wire

log = logging.getLogger("hfx.worker.kv")

DEFAULT_LEASE_S = 30.0
DEFAULT_DEADLINE_S = 10.0


@dataclass(frozen=True)
class StageSpec:
    req_id: str
    transfer_id: str
    block_ids: list[int]
    num_tokens: int
    expires_unix_s: float


@dataclass(frozen=True)
class LoadSpec:
    req_id: str
    address: str
    transfer_id: str
    from_block: int
    block_ids: list[int]   # D's blocks for staged blocks from_block.. (empty: full local hit, just release)
    deadline_s: float


@dataclass
class HfxKvMetadata(KVConnectorMetadata):
    stages: list[StageSpec] = field(default_factory=list)
    loads: list[LoadSpec] = field(default_factory=list)


class HfxKvConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self.address = str(extra.get("hfx_kv_address", ""))  # the worker service's KV server
        self.staging_dir = str(extra.get("hfx_kv_dir", ""))
        # "auto": map P's staged file when P is on this host, else stream; "tcp": always stream.
        self.transport = str(extra.get("hfx_kv_transport", "auto"))
        self.lease_s = float(extra.get("hfx_kv_lease_s", DEFAULT_LEASE_S))
        self.deadline_s = float(extra.get("hfx_kv_deadline_s", DEFAULT_DEADLINE_S))
        self.block_size = vllm_config.cache_config.block_size
        # Scheduler side.
        self._pending_stages: list[StageSpec] = []
        self._pending_loads: list[LoadSpec] = []
        self._local_hit: dict[str, int] = {}
        self._staging: set[str] = set()  # finished prefill legs whose blocks are not yet staged
        # Worker side.
        self._kv: dict[str, torch.Tensor] = {}
        self._layout: dict = {}
        self._lock = threading.Lock()
        self._sent: set[str] = set()
        self._loaded: set[str] = set()
        self._failed: set[str] = set()
        self._stager: shm.ArenaStager | None = None  # created on the first stage (this process)
        self._no_arena = False
        self._buffers = buffers.BufferPool()

    # ---- scheduler side (engine core process) ----

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        params = request.kv_transfer_params or {}
        if not params.get("do_remote_prefill"):
            return 0, False
        # The staged tokens, less what the local prefix cache has; the request's last token is
        # always computed here (it yields the next token's logits).
        staged = min(int(params.get("num_tokens", 0)), request.num_tokens - 1)
        self._local_hit[request.request_id] = num_computed_tokens
        count = staged - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        params = request.kv_transfer_params or {}
        if not params.get("do_remote_prefill"):
            return
        params["do_remote_prefill"] = False  # once: a preempted request recomputes, it does not pull again
        local = self._local_hit.pop(request.request_id, 0)
        first = local // self.block_size
        if num_external_tokens > 0:
            last = -(-(local + num_external_tokens) // self.block_size)
            block_ids = list(blocks.get_block_ids()[0][first:last])
        else:
            block_ids = []  # the local cache had it all: only release P's lease
        self._pending_loads.append(LoadSpec(request.request_id, str(params["remote_address"]),
                                            str(params["transfer_id"]), first, block_ids, self.deadline_s))

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        meta = HfxKvMetadata(stages=self._pending_stages, loads=self._pending_loads)
        self._pending_stages, self._pending_loads = [], []
        return meta

    def has_pending_push_work(self) -> bool:
        # Keeps the engine stepping until the worker side has staged every finished prefill leg
        # (and vLLM freed its blocks), even when no other request would make it step.
        return bool(self._staging)

    def update_connector_output(self, connector_output: Any) -> None:
        self._staging -= set(connector_output.finished_sending or ())

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        params = request.kv_transfer_params or {}
        self._local_hit.pop(request.request_id, None)
        if not params.get("do_remote_decode") or request.status != RequestStatus.FINISHED_LENGTH_CAPPED:
            return False, None  # aborted or stopped early: nothing to hand on
        if not self.address or not self.staging_dir:
            log.error("do_remote_decode on an engine without hfx_kv_address / hfx_kv_dir: nothing staged")
            return False, None
        num_tokens = len(request.prompt_token_ids or ())
        num_blocks = -(-num_tokens // self.block_size)
        lease_s = float(params.get("lease_s") or self.lease_s)
        expires = time.time() + lease_s
        transfer_id = uuid.uuid4().hex  # a file name in the staging directory
        self._staging.add(request.request_id)
        self._pending_stages.append(StageSpec(request.request_id, transfer_id, list(block_ids[:num_blocks]),
                                              num_tokens, expires))
        return True, {"remote_address": self.address, "transfer_id": transfer_id, "num_tokens": num_tokens,
                      "num_blocks": num_blocks, "lease_expiry_unix_s": expires}

    # ---- worker side (beside the KV cache) ----

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv = dict(sorted(kv_caches.items()))
        first = next(iter(self._kv.values()))
        per_layer = first[0].numel() * first.element_size()
        self._layout = {"layers": len(self._kv), "dtype": str(first.dtype), "block_shape": list(first.shape[1:]),
                        "block_size": self.block_size, "block_bytes": per_layer * len(self._kv)}
        if fused.usable(self._layout["block_bytes"]):  # compiled now, not in the first pull (0.1-0.25 s)
            threading.Thread(target=fused.copier, name="kv-copy-build", daemon=True).start()

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HfxKvMetadata)
        for stage in meta.stages:
            self._stage(stage)
        for spec in meta.loads:
            # A full local hit is no asynchronous load for vLLM (it asked for none): reporting it
            # finished would hit a running request (vLLM asserts, and its engine core dies).
            target = self._load if spec.block_ids else self._release_staged
            threading.Thread(target=target, args=(spec,), name=f"kv-pull-{spec.req_id}", daemon=True).start()

    def _gather(self, block_ids: list[int], out: torch.Tensor) -> None:
        """Into `out`, [n_blocks, block_bytes] uint8: each row one block, every layer's slice in layer order."""
        n = len(block_ids)
        index = torch.tensor(block_ids, dtype=torch.long)
        per_layer = self._layout["block_bytes"] // len(self._kv)
        for li, kv in enumerate(self._kv.values()):
            out[:, li * per_layer:(li + 1) * per_layer] = kv.index_select(0, index).view(n, -1).view(torch.uint8)

    def _stage(self, spec: StageSpec) -> None:
        """The blocks into this worker's arena (or a file of their own when it is full), then their
        metadata: from then on the worker service holds them under the lease."""
        offset = None
        try:
            shape = (len(spec.block_ids), self._layout["block_bytes"])
            stager = self._arena_stager()
            region = stager.region(spec.transfer_id, shape[0] * shape[1]) if stager is not None else None
            if region is not None:
                offset, view = region
                rows = view.reshape(shape)
            else:
                rows = np.empty(shape, dtype=np.uint8)
            self._gather(spec.block_ids, torch.from_numpy(rows))
            shm.write(self.staging_dir, spec.transfer_id, rows, [wire.crc32(row) for row in rows], spec.num_tokens,
                      self._layout, spec.expires_unix_s, arena_offset=offset)
        except Exception:  # D then finds no transfer and recomputes
            log.exception("staging KV for %s failed", spec.req_id)
            if offset is not None and self._stager is not None:
                self._stager.abandon(spec.transfer_id)
        with self._lock:
            self._sent.add(spec.req_id)

    def _arena_stager(self) -> shm.ArenaStager | None:
        if self._stager is None and not self._no_arena:
            try:
                self._stager = shm.ArenaStager(self.staging_dir)
            except OSError as err:  # no arena in the folder: each transfer gets a file
                log.warning("no KV staging arena in %s (%s): staging to files", self.staging_dir, err)
                self._no_arena = True
        return self._stager

    def _load(self, spec: LoadSpec) -> None:
        ok, outcome, result, started_s = False, "ok", tcp.PullResult(), time.time()
        try:
            n = len(spec.block_ids)
            with self._buffers.take(n * self._layout["block_bytes"]) as flat:
                rows = flat.reshape(n, self._layout["block_bytes"])
                buf = torch.from_numpy(rows)
                pull = samehost.pull if self.transport == "auto" else tcp.pull
                result = pull(spec.address, spec.transfer_id, from_block=spec.from_block, layout=self._layout,
                              deadline_s=spec.deadline_s,
                              into=lambda i, count: rows[i - spec.from_block:i - spec.from_block + count].data)
                if result.blocks != n:
                    raise wire.Integrity(f"pulled {result.blocks} blocks, {n} were allocated")
                self._scatter(spec.block_ids, buf)
            ok = True
            log.info("KV %s: %d blocks, %d bytes in %.1f ms from %s", spec.transfer_id, result.blocks,
                     result.bytes, result.ms, spec.address)
        except Exception as err:
            outcome = err.kind if isinstance(err, wire.KvTransferError) else "error"
            log.warning("KV %s from %s failed (%s): the prefill is recomputed here", spec.transfer_id,
                        spec.address, err)
        finally:
            self._report(outcome, result, spec.transfer_id, started_s)
            with self._lock:
                (self._loaded if ok else self._failed).add(spec.req_id)

    def _release_staged(self, spec: LoadSpec) -> None:
        """This engine's prefix cache held every staged token: free P's copy unread."""
        try:
            tcp.request(spec.address, {"op": "release", "transfer_id": spec.transfer_id})
        except wire.KvTransferError as err:  # P's lease frees it
            log.warning("releasing KV %s at %s failed: %s", spec.transfer_id, spec.address, err)
        self._report("local-hit", tcp.PullResult(), spec.transfer_id, time.time())

    def _report(self, outcome: str, result: tcp.PullResult, transfer_id: str, started_s: float) -> None:
        """Tell this engine's worker service how the pull went (its metrics and stats, and the
        decode leg's kv.transfer span): before the load is reported done, so the record is there
        by the leg's first token. `ms` is the pull's own clock when it succeeded, else the time
        the attempt took."""
        ended_s = time.time()
        ms = result.ms if outcome == "ok" else (ended_s - started_s) * 1000.0
        try:
            tcp.request(self.address, {"op": "pulled", "outcome": outcome, "bytes": result.bytes, "ms": ms,
                                       "transfer_id": transfer_id, "blocks": result.blocks,
                                       "start_unix_s": started_s, "end_unix_s": ended_s}, timeout_s=1.0)
        except wire.KvTransferError as err:
            log.warning("could not report a KV pull to %s: %s", self.address, err)

    def _scatter(self, block_ids: list[int], buf: torch.Tensor) -> None:
        index = torch.tensor(block_ids, dtype=torch.long)
        per_layer = self._layout["block_bytes"] // len(self._kv)
        for li, kv in enumerate(self._kv.values()):
            # A strided view of each row's slice for this layer: one copy, straight into the cache.
            rows = buf[:, li * per_layer:(li + 1) * per_layer].view(kv.dtype)
            kv.index_copy_(0, index, rows.unflatten(1, kv.shape[1:]))

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        with self._lock:
            sent, loaded, failed = self._sent, self._loaded, self._failed
            self._sent, self._loaded, self._failed = set(), set(), set()
        return KVConnectorTransferResults(finished_sending=sent, finished_recving=loaded | failed,
                                          failed_recving=failed)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def shutdown(self) -> None:
        return
