"""The simulated engine ("sim") behind the Engine seam: a SIMULATOR, never real inference.

Token timing comes from a step-time model (a built-in profile or a JSON file from `hfx
profile`); batching, chunked prefill, KV admission and recompute preemption come from the same
SimInstance the discrete-event simulator uses. Here its steps are driven on a clock: real time
in a worker (asyncio sleeps), a virtual clock in tests. Token ids are a deterministic hash of
(seed, prompt ids, position) within the model's vocabulary, so runs repeat exactly; text is their
decoding with the model's tokenizer when it has a tokenizer.json.

Needs neither vLLM nor an accelerator: a sim worker is one light Python process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.domain import FinishReason, StepInFlight, StepSample
from services.sim.instance import SimInstance, SimSeq
from services.sim.profiles import Profile, load_profile
from services.worker.engine.base import EngineOutput, EngineRequest, EngineStats
from services.worker.engine.sim_weights import STORAGE, pull_and_drop
from services.worker.kv.params import KvParams

log = logging.getLogger("hfx.worker.sim")
RECENT_STEPS = 32
SIM_KV_ADDRESS = "simulated-kv:0"  # P/D emulation: no KV moves between simulated engines
_MASK64 = (1 << 64) - 1
YIELDS_PER_SLEEP = 4


@dataclass(frozen=True)
class SimEngineConfig:
    model: str                     # checkpoint dir: max_model_len, vocabulary, EOS id, tokenizer
    profile: str = "cpu-tiny"      # built-in profile name or profile JSON path
    seed: int = 0
    max_model_len: int = 0         # 0: the model's own (config.json max_position_embeddings)
    # When the event loop wakes late for a step end (a busy CPU), the next step starts at the
    # step's ideal end so lateness does not accumulate; beyond this lag the timeline restarts.
    max_catchup_ms: float = 50.0
    # Weights (SIMULATED load, real stream: sim_weights.py): "HOST:PORT" = pull a donor's stream
    # at start; standby = wait for LoadWeights.
    weights_from: str = ""
    standby: bool = False
    weights_transport: str = "auto"
    weights_stall_timeout_s: float = 10.0
    weights_deadline_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Any) -> SimEngineConfig:
        """From the worker's config: model, sim_profile, sim_seed, max_model_len."""
        return cls(model=settings.model, profile=getattr(settings, "sim_profile", "") or "cpu-tiny",
                   seed=getattr(settings, "sim_seed", 0), max_model_len=getattr(settings, "max_model_len", 0) or 0,
                   weights_from=getattr(settings, "weights_from", ""), standby=getattr(settings, "standby", False),
                   weights_transport=getattr(settings, "weights_transport", "auto"),
                   weights_stall_timeout_s=getattr(settings, "weights_stall_timeout_s", 10.0),
                   weights_deadline_s=getattr(settings, "weights_deadline_s", 300.0))


class RealClock:
    def now_s(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class VirtualClock:
    """A clock that jumps: sleeping advances it at once. Only the engine's step loop sleeps on
    it, so step timing is exact and tests assert on simulated time, not on machine speed."""

    def __init__(self) -> None:
        self.t_s = 0.0

    def now_s(self) -> float:
        return self.t_s

    async def sleep(self, seconds: float) -> None:
        # Let every consumer woken by the previous step read the clock before time moves on.
        for _ in range(YIELDS_PER_SLEEP):
            await asyncio.sleep(0)
        self.t_s += max(0.0, seconds)


@dataclass
class _Stream:
    prompt_tokens: int
    output_tokens: int
    hash64: int
    position: int = 0
    pending: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def token_id(hash64: int, position: int, vocab_size: int, avoid: int) -> int:
    """Deterministic token at `position` (splitmix64 of the prompt hash and position)."""
    z = (hash64 + (position + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    tok = (z ^ (z >> 31)) % vocab_size
    return (tok + 1) % vocab_size if tok == avoid else tok


class SimEngine:
    """Create, `await start()`, then serve; `stats()` reads like a real engine's."""

    def __init__(self, config: SimEngineConfig, clock: RealClock | VirtualClock | None = None) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.max_model_len = 0
        self.profile: Profile | None = None
        self.vocab_size = 0
        self.eos_token_id = -1
        self.sim: SimInstance | None = None
        self._tokenizer: Any = None
        self._streams: dict[str, _Stream] = {}
        self._aborted: set[str] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._steps: collections.deque[StepSample] = collections.deque(maxlen=RECENT_STEPS)
        self.steps_total = 0
        self._t_end_s: float | None = None
        self._step_started_s: float | None = None   # the step in flight began (engine clock)
        # P/D emulation, SIMULATED: a prefill leg "stages" nothing and names a transfer at this
        # placeholder address; a decode leg skips the prefill of the tokens it was told are staged.
        self.kv_address = SIM_KV_ADDRESS
        # ReportsWeights: how the (simulated) weights arrived, and the start phases.
        self.weights_report: dict = {"source": "none (standby, simulated)" if config.standby else STORAGE}
        self.timings: dict[str, float] = {}

    async def pull_weights(self, address: str) -> dict:
        """Receive and check the donor's real stream, then drop it (sim_weights.py)."""
        c = self.config
        self.weights_report = await asyncio.get_running_loop().run_in_executor(
            None, pull_and_drop, c.model, address, "cpu", c.weights_transport, c.weights_stall_timeout_s,
            c.weights_deadline_s)
        log.info("SIMULATED engine weights: %s", self.weights_report)
        return self.weights_report

    async def prepare_pull(self, address: str) -> dict:
        """As a vLLM standby: map the donor's files ahead (real; the pull that follows uses them)."""
        from services.worker.weights.engine_side import prepare_pull, pull_spec

        spec = pull_spec(self.config, address, "cpu")   # as pull_weights: sim weights are host memory
        return await asyncio.get_running_loop().run_in_executor(None, prepare_pull, None, spec)

    async def load_from_storage(self) -> dict:
        self.weights_report = {"source": STORAGE}
        return self.weights_report

    async def start(self) -> None:
        if self.config.weights_from and self.config.weights_from != "storage" and not self.config.standby:
            t0 = time.monotonic()
            await self.pull_weights(self.config.weights_from)
            self.timings["weight_load_s"] = time.monotonic() - t0
        self.profile = load_profile(self.config.profile)
        model_config = json.loads((Path(self.config.model) / "config.json").read_text())
        own_len = int(model_config.get("max_position_embeddings", 2048))
        self.max_model_len = min(own_len, self.config.max_model_len) if self.config.max_model_len else own_len
        self.vocab_size = int(model_config.get("vocab_size", 32000))
        eos = model_config.get("eos_token_id", -1)
        self.eos_token_id = int(eos[0] if isinstance(eos, list) else (eos if eos is not None else -1))
        tok_path = Path(self.config.model) / "tokenizer.json"
        if tok_path.is_file():
            from tokenizers import Tokenizer  # light (Rust); no transformers import in a sim worker

            self._tokenizer = Tokenizer.from_file(str(tok_path))
        p = self.profile
        self.sim = SimInstance("sim", p.model, p.kv_capacity_tokens, p.chunk_tokens, p.max_num_seqs,
                               p.step_noise, seed=self.config.seed)
        self._loop_task = asyncio.create_task(self._step_loop())
        m = p.model
        log.warning("SIMULATED ENGINE (not inference): profile %s, step_ms = %.3g + %.3g*prefill + %.3g*decode_seqs"
                    " + %.3g*kv_tokens, KV %d tokens, %d-token steps, %d seqs, seed %d, max_model_len %d",
                    p.name, m.c0_ms, m.c1_ms_per_prefill_token, m.c2_ms_per_decode_seq, m.c3_ms_per_kv_token,
                    p.kv_capacity_tokens, p.chunk_tokens, p.max_num_seqs, self.config.seed, self.max_model_len)

    # -- requests -------------------------------------------------------------------------------

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        prompt = len(req.prompt_token_ids)
        if prompt >= self.max_model_len:
            raise ValueError(f"prompt of {prompt} tokens does not fit max_model_len {self.max_model_len}")
        if req.request_id in self._streams:
            raise ValueError(f"request {req.request_id!r} is already running")
        output = max(1, min(req.sampling.max_tokens or 16, self.max_model_len - prompt))
        seed = self.config.seed if req.sampling.seed is None else req.sampling.seed
        raw = b"".join(int(t).to_bytes(4, "little", signed=True) for t in req.prompt_token_ids)
        stream = _Stream(prompt, output, (zlib.crc32(raw) << 32 | (seed & 0xFFFFFFFF)) & _MASK64)
        self._streams[req.request_id] = stream
        if req.kv is not None and req.kv.do_remote_decode:
            output = 1
        # A decode leg computes only what P did not stage (at least the last prompt token).
        computed = prompt - min(req.kv.num_tokens, prompt - 1) if req.kv is not None and req.kv.do_remote_prefill else prompt
        self._instance().add(SimSeq(req.request_id, computed, output))
        self._wake.set()
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                ids, stream.pending = stream.pending, []
                done = stream.finish is not None
                if ids or done:
                    kv = self._staged(req, prompt) if done and stream.finish == FinishReason.LENGTH else None
                    yield EngineOutput(ids, self._text(ids), done, stream.finish, prompt, kv=kv)
                if done:
                    return
        finally:
            if self._streams.pop(req.request_id, None) is not None and stream.finish is None:
                self._drop(req.request_id)

    def _staged(self, req: EngineRequest, prompt: int) -> KvParams | None:
        if req.kv is None or not req.kv.do_remote_decode:
            return None
        return KvParams(remote_address=SIM_KV_ADDRESS, transfer_id=f"sim-{req.request_id}", num_tokens=prompt,
                        lease_expiry_unix_s=time.time() + (req.kv.lease_s or 30.0))

    async def release_kv(self, transfer_id: str) -> bool:
        return False  # nothing is staged in a simulation

    def kv_pull(self, transfer_id: str) -> dict | None:
        return None  # a simulated decode leg pulls nothing

    async def kv_stats(self) -> dict:
        return {"simulated": True, "leases": 0, "blocks": 0, "bytes": 0, "freed": {}, "pulls": {"outcomes": {}}}

    async def abort(self, request_id: str) -> bool:
        stream = self._streams.get(request_id)
        if stream is None or stream.finish is not None:
            return False
        self._drop(request_id)
        stream.finish = FinishReason.ABORT
        stream.ready.set()
        return True

    def _instance(self) -> SimInstance:
        if self.sim is None:
            raise RuntimeError("the simulated engine is not started (await start() first)")
        return self.sim

    def _drop(self, request_id: str) -> None:
        # SimInstance does not take a request off mid-step; the step loop does it after the step.
        sim = self._instance()
        if sim.busy:
            self._aborted.add(request_id)
        else:
            sim.remove(request_id)

    def _text(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids) if self._tokenizer is not None and ids else ""

    # -- the step loop --------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        sim, clock = self._instance(), self.clock
        while True:
            if not sim.has_work:
                self._t_end_s = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = clock.now_s()
            t_end = self._t_end_s
            start = t_end if t_end is not None and now - t_end <= self.config.max_catchup_ms / 1000 else now
            ms = sim.begin_step()
            if ms <= 0:  # queued work that cannot be admitted yet (KV full): wait for a change
                self._t_end_s = None
                self._wake.clear()
                await self._wake.wait()
                continue
            end = start + ms / 1000.0
            self._step_started_s = start
            await clock.sleep(end - clock.now_s())
            self._t_end_s = end
            self._step_started_s = None
            self._finish_step(sim.end_step(), ms)

    def _finish_step(self, out, ms: float) -> None:
        sim = self._instance()
        prefill, decodes, kv = sim.last_step_shape
        self._steps.append(StepSample(prefill, decodes, kv, ms))
        self.steps_total += 1
        for rid in out.first_tokens + out.tokens:
            stream = self._streams.get(rid)
            if stream is None or rid in self._aborted:
                continue
            stream.pending.append(token_id(stream.hash64, stream.position, self.vocab_size, self.eos_token_id))
            stream.position += 1
            stream.ready.set()
        for rid in out.finished:
            stream = self._streams.get(rid)
            if stream is not None and rid not in self._aborted:
                stream.finish = FinishReason.LENGTH
                stream.ready.set()
        for rid in self._aborted:
            sim.remove(rid)
        self._aborted.clear()

    # -- stats and lifecycle --------------------------------------------------------------------

    def stats(self) -> EngineStats:
        sim = self.sim
        if sim is None:
            return EngineStats()
        steps = tuple(self._steps)
        return EngineStats(
            running_requests=len(sim.running), waiting_requests=len(sim.waiting),
            kv_usage=sim.kv_used_tokens / sim.kv_capacity_tokens, kv_capacity_tokens=sim.kv_capacity_tokens,
            recent_step_ms=tuple(s.step_ms for s in steps), recent_steps=steps, steps_total=self.steps_total,
            reports_step=True, step_in_flight=self._step_in_flight(),
        )

    def _step_in_flight(self) -> StepInFlight | None:
        """The step running now, its start on the time.time() clock of load reports (the step loop
        keeps the engine's clock): what a policy needs to predict when a new prefill can start."""
        started, sim = self._step_started_s, self.sim
        if started is None or sim is None or not sim.busy:
            return None
        prefill, decodes, kv = sim.last_step_shape
        return StepInFlight(time.time() - (self.clock.now_s() - started), prefill, decodes, kv)

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
        for stream in self._streams.values():
            if stream.finish is None:
                stream.finish = FinishReason.ABORT
                stream.ready.set()
