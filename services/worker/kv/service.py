"""The worker service's side of KV transfer for a vLLM engine: the transfer server in this
process (vLLM's worker process spins holding the GIL, which starved a server thread there), the
shared-memory folder the engine's connector stages into, and vLLM's KVTransferConfig for it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from services.worker.kv import arena, probe, shm
from services.worker.kv.params import CONNECTOR_MODULE, CONNECTOR_NAME, KvParams
from services.worker.kv.store import StagingStore
from services.worker.kv.tcp import KvServer

log = logging.getLogger("hfx.worker.kv")


class KvService:
    def __init__(self, host: str, port: int, arena_bytes: int = arena.DEFAULT_BYTES) -> None:
        root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        shm.remove_orphans(root)  # staged KV of workers that died (SIGKILL) before cleaning up
        self.staging_dir = tempfile.mkdtemp(prefix=f"hfx-kv-{os.getpid()}-", dir=root)
        try:
            arena.create(self.staging_dir, arena_bytes)
        except OSError as err:  # no room in shared memory: every transfer gets a file of its own
            log.warning("no KV staging arena of %d MiB in %s: %s", arena_bytes >> 20, self.staging_dir, err)
        self.server = KvServer(StagingStore(), self.staging_dir, host, port).start()
        self.address = self.server.address
        log.info("KV transfer server on %s, staging in %s", self.address, self.staging_dir)

    def vllm_config(self, *, transport: str, lease_s: float, deadline_s: float) -> Any:
        from vllm.config import KVTransferConfig

        return KVTransferConfig(
            kv_connector=CONNECTOR_NAME, kv_connector_module_path=CONNECTOR_MODULE, kv_role="kv_both",
            # A failed pull is recomputed by the engine, never served from what arrived.
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={"hfx_kv_address": self.address, "hfx_kv_dir": self.staging_dir,
                                       "hfx_kv_transport": transport, "hfx_kv_lease_s": lease_s,
                                       "hfx_kv_deadline_s": deadline_s},
        )

    async def when_staged(self, kv: KvParams, wait_s: float) -> KvParams | None:
        """`kv` once its blocks are staged and leased here, so a decode leg never starts before
        the blocks it pulls (busy waiting for them, it would starve the engine that stages them of
        CPU); None when staging failed. Polled on the loop: many prefill legs may wait at once."""
        give_up = time.monotonic() + wait_s
        while True:
            staged, why = self.server.lookup(kv.transfer_id, 0.0)
            if staged is not None or why != "unknown" or time.monotonic() >= give_up:
                break
            await asyncio.sleep(0.005)
        if staged is None:
            log.warning("KV of %s not staged (%s): the decode leg will compute the prompt", kv.transfer_id, why)
            return None
        return kv

    async def release(self, transfer_id: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.server.release, transfer_id)

    def measure(self, bytes_per_token: int, block_size: int, layers: int, dtype: str) -> dict:
        """The transfer cost per token (probe.py); before serving, so nothing else uses the arena's top."""
        return probe.measure(self.address, self.staging_dir, probe.layout_for(bytes_per_token, block_size, layers, dtype))

    def stats(self) -> dict:
        return self.server.handle({"op": "stats"}, None)

    def pull_record(self, transfer_id: str) -> dict | None:
        """The engine's pull of `transfer_id` as its connector reported it here (once)."""
        return self.server.pulls.take(transfer_id)

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.staging_dir, ignore_errors=True)
