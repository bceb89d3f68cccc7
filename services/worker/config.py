"""Typed worker configuration (filled from CLI flags by services.cli)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.domain import Role
from services.common.tracing import TracingConfig


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    instance_id: str
    host: str = "127.0.0.1"
    port: int = 0
    engine: str = "vllm"
    # What the scheduler may place here (registered in the Instance record): whole requests
    # (colocated), prefill legs of P/D requests (prefill), or decode legs (decode).
    role: Role = Role.COLOCATED
    device: str = "cpu"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "hfx"
    scheduler_address: str = ""          # empty: do not push load reports
    heartbeat_ttl_s: float = 5.0
    heartbeat_interval_s: float = 1.0  # registry + load to Redis; the scheduler gets loads every report_interval_s
    report_interval_s: float = 0.25
    # Decode tokens of requests that already streamed ride the next Session message if it leaves
    # within this many ms of the last (first tokens, ends and errors go at once): fewer messages,
    # less CPU on router and worker, at most this much later delivery of a middle token. 10 ms:
    # on 2 vLLM CPU engines at 20-24 req/s the router's CPU fell by a third and TPOT mean to the
    # peer's (BENCHMARKS.md, "The token path, fourteenth session"); steps slower than the window
    # are not merged at all, so it only acts where per-token overhead is largest.
    session_coalesce_ms: float = 10.0
    report_timeout_s: float = 1.0
    drain_timeout_s: float = 30.0
    engine_check_s: float = 1.0        # how often the worker checks its engine is alive (ReportsHealth)
    kv_cache_memory_bytes: int = 256 * 1024 * 1024
    max_num_seqs: int = 64
    cpu_cores: str = ""                  # CPU engines: cores for this worker's engine threads
    # CPU engines: advise transparent huge pages for the engine's large allocations (torch's and
    # malloc's): a standby's pull takes ~20x fewer page faults (BENCHMARKS.md, issue 12, fifth pass).
    # None: on where the engine reloads its weights (standby, weights_from), off elsewhere.
    cpu_huge_pages: bool | None = None
    max_model_len: int = 0               # 0: the model's own
    tracing: TracingConfig = TracingConfig()
    metrics_port: int = 0                # Prometheus /metrics on 127.0.0.1; 0 = off
    sim_profile: str = "cpu-tiny"        # engine "sim": built-in latency profile name or profile JSON path
    sim_seed: int = 0                    # engine "sim": token ids and step noise repeat given the seed
    # Profile the engine at start and store the fitted step-time model in Redis for the scheduler
    # (a sim engine stores the model it simulates, without measuring).
    profile_at_start: bool = True
    # Weights (issue 12). weights_from: "" = vLLM reads the checkpoint at start; "storage" = start
    # with dummy weights then reload from the files (timed apart); "HOST:PORT" = pull them from
    # that donor worker, falling back to storage if it dies, stalls or sends anything wrong.
    weights_from: str = ""
    weights_stall_timeout_s: float = 10.0
    weights_deadline_s: float = 300.0
    weights_transport: str = "auto"      # "auto": shared memory when the donor is on this host, else TCP
    # Serve this worker's weights to new workers (a donor): costs the checkpoint's size in memory.
    serve_weights: bool = False
    weights_port: int = 0                # 0 = a free port
    # Standby: start the engine with dummy weights, serve gRPC, stay out of the registry until a
    # LoadWeights call loads the weights (from a donor or storage); then register and serve.
    standby: bool = False
    # A standby rehearses vLLM's reload once at start (zeros, no file read), so the pull at the
    # decision is the engine's second reload, which ran 0.5-0.6 s faster per GB here.
    standby_warm_reload: bool = True
    # P/D KV transfer (issue 10; services/worker/kv): the engine's connector and its transfer server
    # on this worker's host, kv_port (0: a free one); staged KV is held kv_lease_s for its decode
    # worker; a pull longer than kv_deadline_s is abandoned and the decode worker recomputes.
    kv_transfer: bool = False
    # The scheduler's pd_local_prefill, for SetRole's serving_gap check (a cluster of decode
    # workers alone serves nothing when they may not prefill).
    pd_local_prefill: bool = True
    kv_port: int = 0
    kv_lease_s: float = 30.0
    kv_deadline_s: float = 10.0

    @property
    def kv_host(self) -> str:
        return self.host
