"""The vLLM engine behind the Engine seam: AsyncLLM with priority scheduling and delta streaming.

vLLM is imported only when an engine starts, so importing this module stays cheap. vLLM runs its
engine core in a spawned subprocess: an entry script that starts this engine needs the
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common import lifeline
from services.common.domain import FinishReason, Sampling
from services.worker.engine import prompt_tail
from services.worker.engine.base import EngineOutput, EngineRequest, EngineStats
from services.worker.kv.params import KvParams
from services.worker.engine.device import device_engine_kwargs, device_environment, pin_cpu_cores
from services.worker.engine.vllm_steps import StepSink, stat_logger_factory

log = logging.getLogger("hfx.worker.vllm")

MiB = 1024 * 1024

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
}


@dataclass(frozen=True)
class VllmEngineConfig:
    model: str
    device: str = "cpu"
    max_model_len: int | None = None  # None: the model's own
    kv_cache_memory_bytes: int | None = 256 * MiB  # None: vLLM sizes it (GPU only)
    max_num_seqs: int = 64
    seed: int = 0
    enforce_eager: bool = True
    load_format: str = "auto"  # "dummy" starts without reading weights (for streamed loading)
    # Where the weights come from: "" = vLLM reads the checkpoint while it starts; "storage" = start
    # with dummy weights, then reload from the checkpoint files (timed apart, like a pull);
    # "HOST:PORT" = start with dummy weights, then pull from that donor (falls back to storage).
    weights_from: str = ""
    weights_stall_timeout_s: float = 10.0   # a donor silent this long counts as dead
    weights_deadline_s: float = 300.0       # a whole pull slower than this falls back to storage
    weights_transport: str = "auto"  # "auto" (shared memory on one host, else TCP), "tcp", "shm"
    standby: bool = False  # start with dummy weights and load none: pull_weights / load_from_storage later
    standby_warm_reload: bool = True  # a standby rehearses one reload at start (engine_side.warm_reload)
    vllm_log_level: str = "WARNING"  # applies unless VLLM_LOGGING_LEVEL is already set
    cpu_cores: str = ""  # CPU only: cores for this engine's threads ("0", "2-3"); empty = vLLM decides
    # CPU only: the engine's large allocations on transparent huge pages (device.py); None = on for
    # engines that start with dummy weights and reload (standby, weights_from), off otherwise.
    cpu_huge_pages: bool | None = None
    # P/D KV transfer (services/worker/kv): HFX's connector in the engine and its transfer server
    # on kv_host:kv_port (0: a free port), staged KV held kv_lease_s, pulls bounded by kv_deadline_s.
    kv_transfer: bool = False
    kv_host: str = "127.0.0.1"
    kv_port: int = 0
    kv_lease_s: float = 30.0
    kv_deadline_s: float = 10.0
    kv_stage_wait_s: float = 10.0  # a prefill leg's last chunk waits this long for its KV to be staged
    kv_transport: str = "auto"  # "auto": map a same-host P's staged blocks, else TCP; "tcp": always TCP
    extra_engine_args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> VllmEngineConfig:
        """Take the fields this config shares by name with another settings object.

        Lets the worker pass its own config without this package importing it; a
        max_model_len of 0 there means "the model's own".
        """
        names = [f for f in cls.__dataclass_fields__ if hasattr(settings, f)]
        values = {name: getattr(settings, name) for name in names}
        if not values.get("max_model_len"):
            values["max_model_len"] = None
        return cls(**values)


def engine_args(config: VllmEngineConfig, kv_transfer_config: Any = None) -> dict[str, Any]:
    """The AsyncEngineArgs keyword arguments for `config` (with HFX's KV connector when
    `kv_transfer_config` is given); the device seam has the last word."""
    args: dict[str, Any] = {
        "model": config.model,
        "seed": config.seed,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "enforce_eager": config.enforce_eager,
        "load_format": "dummy" if config.weights_from or config.standby else config.load_format,
        # HFX ranks requests itself and passes priorities down; vLLM's FCFS would ignore them.
        "scheduling_policy": "priority",
        # Only our own stat logger runs: no periodic throughput lines in the log.
        "disable_log_stats": True,
        # Each step's composition as the engine core scheduled it, for the step model (vllm_steps.py).
        "enable_logging_iteration_details": True,
        "enable_log_requests": False,
    }
    if kv_transfer_config is not None:
        args["kv_transfer_config"] = kv_transfer_config
    args.update(config.extra_engine_args)
    args.update(device_engine_kwargs(config.device, kv_cache_memory_bytes=config.kv_cache_memory_bytes))
    return args


def engine_environment(config: VllmEngineConfig, inherited: Mapping[str, str]) -> dict[str, str]:
    """What start() adds to the environment that vLLM's engine core process inherits, over
    `inherited`: the device seam's settings (CPU cores, huge pages)."""
    huge_pages = config.cpu_huge_pages
    if huge_pages is None:  # measured for the reload only (BENCHMARKS.md, issue 12, fifth pass)
        huge_pages = bool(config.standby or config.weights_from)
    return device_environment(config.device, cpu_cores=config.cpu_cores, huge_pages=huge_pages, inherited=inherited)


def sampling_params(sampling: Sampling, kv: KvParams | None = None):
    """vLLM SamplingParams for HFX sampling, streaming only what is new each step; a P/D leg's KV
    parameters ride in extra_args, where vLLM's connectors read them."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop=list(sampling.stop) or None,
        ignore_eos=sampling.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
        extra_args={"kv_transfer_params": kv.to_vllm()} if kv is not None and kv.active else None,
    )


class VllmEngine:
    """Engine over vllm.v1 AsyncLLM. Create, `await start()`, then serve."""

    def __init__(self, config: VllmEngineConfig) -> None:
        self.config = config
        self.max_model_len = 0
        self.chunk_tokens = 0  # token budget per engine step (max_num_batched_tokens), after start()
        self._llm: Any = None
        self._kv_capacity_tokens = 0
        self._sink = StepSink()
        self.engine_timed_steps = True  # recent_steps are timed by the engine core (for the profiler)
        self._live: set[str] = set()
        self._reaper: Any = None
        self.kv_address = ""  # the KV transfer server (services/worker/kv), after start() when kv_transfer
        self._kv: Any = None  # services.worker.kv.service.KvService when kv_transfer
        # How this engine got its weights, and how long the phases of start() took (seconds).
        self.weights_report: dict[str, Any] = {"source": "storage (vLLM load)"}
        self.timings: dict[str, float] = {}

    async def start(self) -> None:
        # Blocks the event loop while the engine core boots (tens of seconds on CPU), as
        # vLLM's own API server does; nothing else is served before the engine is ready.
        if self.config.vllm_log_level:
            # Read by vLLM when it configures logging, here and in its engine subprocess.
            os.environ.setdefault("VLLM_LOGGING_LEVEL", self.config.vllm_log_level)
        # Inherited by the engine core process that vLLM spawns next.
        os.environ.update(engine_environment(self.config, os.environ))
        pinned = pin_cpu_cores(self.config.device, self.config.cpu_cores)
        if pinned is not None:
            log.info("bound to CPU cores %s (the engine core inherits it)", sorted(pinned))
        if self.config.weights_from or self.config.standby:
            # collective_rpc passes engine_side's functions by reference (pickled); vLLM refuses
            # that unless told to. Inherited by the engine core spawned next.
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        # vLLM's engine core and its workers run in this process's group; if this process dies,
        # by SIGKILL too, the reaper kills the group, so no engine outlives its worker.
        self._reaper = lifeline.start_group_reaper()
        t_import = time.monotonic()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.timings["vllm_import_s"] = time.monotonic() - t_import

        kv_config = None
        if self.config.kv_transfer:
            from services.worker.kv.service import KvService

            self._kv = KvService(self.config.kv_host, self.config.kv_port)
            self.kv_address = self._kv.address
            kv_config = self._kv.vllm_config(transport=self.config.kv_transport, lease_s=self.config.kv_lease_s,
                                             deadline_s=self.config.kv_deadline_s)
        args = AsyncEngineArgs(**engine_args(self.config, kv_config))
        t0 = time.monotonic()
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[stat_logger_factory(self._sink)])
        self.timings["engine_init_s"] = time.monotonic() - t0
        self.max_model_len = self._llm.model_config.max_model_len
        cache = self._llm.vllm_config.cache_config
        self._kv_capacity_tokens = (cache.num_gpu_blocks or 0) * cache.block_size
        self.chunk_tokens = int(self._llm.vllm_config.scheduler_config.max_num_batched_tokens or 0)
        self._sink.kv_capacity_tokens = self._kv_capacity_tokens
        if self.config.standby:
            self.weights_report = {"source": "none (standby, dummy weights)"}
            if self.config.standby_warm_reload:
                from services.worker.weights.engine_side import warm_reload

                (warm,) = await self._llm.collective_rpc(warm_reload, args=(self.config.model,))
                self.timings["standby_warm_reload_s"] = warm["seconds"]
                log.info("standby: reload rehearsed on zeros in %.2f s (%d minor faults)", warm["seconds"],
                         warm["minor_faults"])
        elif self.config.weights_from:
            t1 = time.monotonic()
            self.timings["weight_load_started_unix_s"] = time.time()
            if self.config.weights_from == "storage":
                await self.load_from_storage()
            else:
                await self.pull_weights(self.config.weights_from)
            self.timings["weight_load_s"] = time.monotonic() - t1
            self.timings["weight_load_ended_unix_s"] = time.time()

    def failure(self) -> str | None:
        """ReportsHealth: vLLM marks its client errored once the engine core process is gone."""
        if self._llm is not None and self._llm.errored:
            return f"vLLM engine core dead: {self._llm.dead_error}"
        return None

    async def pull_weights(self, address: str, *, fallback: bool = True) -> dict[str, Any]:
        """Replace every weight with the donor's stream at `address` (checked tensor by tensor);
        when the stream fails, reload from the checkpoint files instead (unless fallback=False:
        then raise). Returns and keeps the report (source, timings, bytes, failure)."""
        from services.worker.weights.engine_side import pull_weights

        spec = {**self._pull_spec(address), "fallback": fallback}
        (report,) = await self._llm.collective_rpc(pull_weights, args=(spec,))
        await self._forget_old_kv()
        self.weights_report = report
        log.info("weights: %s", report)
        return report

    async def prepare_pull(self, address: str) -> dict[str, Any]:
        """Before pull_weights(address): the transport's work that can be done early, in the
        engine process (one host: the donor's files mapped there, their pages faulted in)."""
        from services.worker.weights.engine_side import prepare_pull

        (report,) = await self._llm.collective_rpc(prepare_pull, args=(self._pull_spec(address),))
        log.info("weights prepared ahead of a pull: %s", report)
        return report

    async def load_from_storage(self) -> dict[str, Any]:
        from services.worker.weights.engine_side import load_from_storage

        (report,) = await self._llm.collective_rpc(load_from_storage, args=(self.config.model,))
        await self._forget_old_kv()
        self.weights_report = report
        return report

    def _pull_spec(self, address: str) -> dict[str, Any]:
        from services.worker.weights.engine_side import pull_spec

        return pull_spec(self.config, address, self.config.device)

    async def _forget_old_kv(self) -> None:
        """After the weights changed, no KV block computed under the old ones may be reused.
        vLLM's prefix cache is keyed by token ids, not by weights: a standby that ran requests
        on its dummy weights (the latency profile at start) would otherwise serve a later prompt
        with the same leading blocks from that KV, and give wrong tokens with success. Refused
        while requests run (a reload under running requests is no load to serve from)."""
        if not await self._llm.reset_prefix_cache():
            raise RuntimeError("weights replaced while requests were running: the prefix cache could not be reset")

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        prompt = await self._render(req.prompt_token_ids)
        # vLLM's text is wrong for a prompt that ends mid-character (a P/D decode leg, a resumed
        # request): the worker makes that text, and matches the stop strings over it itself.
        text = prompt_tail.tail_text(self._fast_tokenizer(), req.prompt_token_ids)
        stop = prompt_tail.TailStop(req.sampling.stop) if text is not None and req.sampling.stop else None
        sampling = dataclasses.replace(req.sampling, stop=()) if stop is not None else req.sampling
        stream = self._llm.generate(
            prompt, sampling_params(sampling, req.kv), req.request_id,
            priority=-req.priority,  # vLLM runs LOWER values first; HFX ranks higher first
        )
        self._live.add(req.request_id)
        finished = False  # by vLLM: if not, closing its stream aborts the request there
        try:
            async for out in stream:
                finished = out.finished
                output = _to_engine_output(out, len(req.prompt_token_ids))
                if text is not None:
                    output = prompt_tail.tail_output(output, text, stop)
                if output.kv is not None and output.kv.transfer_id and self._kv is not None:
                    output = dataclasses.replace(output, kv=await self._kv.when_staged(output.kv,
                                                                                       self.config.kv_stage_wait_s))
                yield output
                if output.finished and not finished:  # a stop string ended it here, not in vLLM
                    break
        finally:
            self._live.discard(req.request_id)
            if not finished:
                # Closing vLLM's generator aborts the request in the engine; without it the
                # request would keep decoding until garbage collection got to the generator.
                await stream.aclose()

    def _fast_tokenizer(self) -> Any:
        """The engine's `tokenizers.Tokenizer` (what vLLM's detokenizer steps), or None."""
        import tokenizers

        backend = getattr(self._llm.get_tokenizer(), "_tokenizer", None)
        return backend if isinstance(backend, tokenizers.Tokenizer) else None

    async def release_kv(self, transfer_id: str) -> bool:
        return self._kv is not None and await self._kv.release(transfer_id)

    async def kv_blocks_idle(self) -> bool:
        """True when every KV block of the engine is free (none held by a request, a pull or a
        stage): vLLM's prefix-cache reset succeeds only then, and empties that cache. For tests."""
        return bool(await self._llm.reset_prefix_cache())

    def kv_pull(self, transfer_id: str) -> dict | None:
        return self._kv.pull_record(transfer_id) if self._kv is not None else None

    async def kv_stats(self) -> dict:
        if self._kv is None:
            raise RuntimeError("this engine was started without KV transfer")
        return self._kv.stats()

    async def measure_kv_transfer(self) -> dict:
        if self._kv is None:
            raise RuntimeError("this engine was started without KV transfer")
        mc, pc = self._llm.vllm_config.model_config, self._llm.vllm_config.parallel_config
        layers = mc.get_num_layers(pc)
        per_token = 2 * layers * mc.get_num_kv_heads(pc) * mc.get_head_size() * mc.dtype.itemsize
        return await asyncio.get_running_loop().run_in_executor(
            None, self._kv.measure, per_token, self._llm.vllm_config.cache_config.block_size, layers, str(mc.dtype))

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._live:
            return False
        # The stream then ends with finish_reason ABORT, so its consumer sees a clean end.
        await self._llm.abort(request_id)
        return True

    def stats(self) -> EngineStats:
        sink = self._sink
        # vLLM reports only on steps with output, so after the last request ends or is
        # aborted its figures go stale; with nothing live here the engine is idle.
        idle = not self._live
        return EngineStats(
            running_requests=0 if idle else sink.running_requests,
            waiting_requests=0 if idle else sink.waiting_requests,
            kv_usage=0.0 if idle else sink.kv_usage,
            kv_capacity_tokens=self._kv_capacity_tokens,
            recent_step_ms=tuple(sink.step_ms),
            recent_steps=tuple(sink.steps),
            steps_total=sink.steps_total,
        )

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._kv is not None:
            self._kv.close()
            self._kv = None

    async def _render(self, prompt_token_ids: list[int]) -> Any:
        # Token-id prompts go through vLLM's renderer: handing AsyncLLM a raw prompt dict is
        # deprecated in vLLM 0.32. The renderer also checks the length against max_model_len.
        from vllm.inputs import TokensPrompt
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self._llm.renderer
        parsed = parse_model_prompt(self._llm.model_config, TokensPrompt(prompt_token_ids=prompt_token_ids))
        (engine_input,) = await renderer.render_cmpl_async([parsed], renderer.default_cmpl_tok_params)
        return engine_input


def _to_engine_output(out: Any, prompt_tokens: int) -> EngineOutput:
    completion = out.outputs[0]
    reason = completion.finish_reason
    return EngineOutput(
        new_token_ids=list(completion.token_ids),
        text_delta=completion.text,
        finished=out.finished,
        finish_reason=None if reason is None else _FINISH_REASONS.get(str(reason), FinishReason.ERROR),
        prompt_tokens=prompt_tokens,
        kv=KvParams.from_vllm(out.kv_transfer_params) if out.finished else None,
    )
