"""`hfx worker` (run one worker process) and `hfx profile` (profile an engine, fit its latency model)."""

from __future__ import annotations

import argparse
import sys

from services import argtypes
from services.common import runtime
from services.commands.common import add_common, add_pd_local_prefill, default_model


def add_parsers(sub) -> None:
    from services.worker.config import WorkerConfig

    p = sub.add_parser("worker", help="run one worker process")
    add_common(p)
    p.add_argument("--port", type=argtypes.port_or_zero, default=0, help="gRPC port; 0 = a free one (default %(default)s)")
    p.add_argument("--instance-id", required=True, type=argtypes.non_empty,
                   help="this worker's id in the registry (required)")
    p.add_argument("--model", type=argtypes.model_dir, help="checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="vllm, or sim (SIMULATED engine) (default %(default)s)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="engine sim: built-in latency profile name or profile JSON file (default %(default)s)")
    p.add_argument("--sim-seed", type=argtypes.non_negative_int, default=0,
                   help="engine sim: seed for token ids and step noise (default %(default)s)")
    p.add_argument("--role", type=argtypes.worker_role, default="colocated", metavar="{colocated,prefill,decode}",
                   help="what the scheduler places here: whole requests (colocated), the prefill legs of P/D "
                        "requests (prefill) or their decode legs (decode) (default %(default)s)")
    add_pd_local_prefill(p)
    p.add_argument("--profile-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="profile the engine at start and store the fitted model in Redis (default on)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"], help="device (default %(default)s)")
    p.add_argument("--scheduler", type=argtypes.address,
                   help="scheduler address HOST:PORT for load reports (default: none, no reports)")
    p.add_argument("--kv-cache-mib", type=argtypes.positive_int, default=256,
                   help="KV cache size on CPU, MiB (default %(default)s)")
    p.add_argument("--max-num-seqs", type=argtypes.positive_int, default=64,
                   help="most requests batched at once (default %(default)s)")
    p.add_argument("--session-coalesce-ms", type=argtypes.non_negative_float, default=WorkerConfig.session_coalesce_ms,
                   help="send further decode tokens at most this often per router stream (first tokens and "
                        "ends go at once); fewer messages, less CPU; 0 = every engine step (default %(default)s)")
    p.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                   help="context length in tokens; 0 = the model's own (default %(default)s)")
    p.add_argument("--cpu-cores", default="", help="device cpu: cores for the engine's threads, e.g. 0 or 2-3 "
                   "(the scaler gives each worker its own share) (default: not pinned)")
    p.add_argument("--cpu-huge-pages", action=argparse.BooleanOptionalAction, default=WorkerConfig.cpu_huge_pages,
                   help="device cpu: advise transparent huge pages for the engine's large allocations (torch's "
                        "THP_MEM_ALLOC_ENABLE, glibc.malloc.hugetlb=1); no effect where the kernel's THP is off "
                        "(default: on with --standby or --weights-from, whose weight load it speeds up; off else)")
    p.add_argument("--metrics-port", type=argtypes.port_or_zero, default=0,
                   help="Prometheus /metrics port; 0 = off (default %(default)s)")
    p.add_argument("--weights-from", type=argtypes.weights_from, default=None,
                   help="engine vllm (sim: the stream is received and checked, then dropped; SIMULATED load): start "
                        "with dummy weights, then take them from a donor worker's weight stream "
                        "HOST:PORT (falls back to the checkpoint if the donor dies, stalls or sends anything that "
                        "does not check out), or 'storage' (reload from the checkpoint, timed apart) "
                        "(default: vLLM reads the checkpoint while it starts)")
    p.add_argument("--weights-stall-timeout", type=argtypes.positive_float, default=10.0,
                   help="seconds without a byte from the donor before falling back to storage (default %(default)s)")
    p.add_argument("--weights-deadline", type=argtypes.positive_float, default=300.0,
                   help="seconds a whole pull may take before falling back to storage (default %(default)s)")
    p.add_argument("--weights-transport", default="auto", choices=["auto", "tcp", "shm"],
                   help="how a pull crosses: shm maps the donor's memory (same host only), tcp streams it; auto "
                        "tries shm, then tcp (default %(default)s)")
    p.add_argument("--serve-weights", action="store_true",
                   help="be a donor: keep the checkpoint in memory (its size in RAM) and stream it to new workers "
                        "(default: off)")
    p.add_argument("--weights-port", type=argtypes.port_or_zero, default=0,
                   help="port of the weight stream with --serve-weights; 0 = a free one (default %(default)s)")
    p.add_argument("--standby", action="store_true",
                   help="engine vllm (or sim, SIMULATED): start the engine with dummy weights and wait, unregistered, for a LoadWeights "
                        "call (donor address or storage) before registering (default: off)")
    p.add_argument("--standby-warm-reload", action=argparse.BooleanOptionalAction,
                   default=WorkerConfig.standby_warm_reload,
                   help="with --standby, engine vllm: rehearse one weight reload at start (zeros, no file read), so "
                        "the load at the decision runs faster (default %(default)s)")
    p.add_argument("--kv-transfer", action="store_true",
                   help="engine vllm: P/D KV transfer: stage a prefill leg's KV for a decode worker and pull a "
                        "decode leg's KV from its prefill worker (default: off)")
    p.add_argument("--kv-port", type=argtypes.port_or_zero, default=0,
                   help="port of the KV transfer server with --kv-transfer; 0 = a free one (default %(default)s)")
    p.add_argument("--kv-lease-s", type=argtypes.positive_float, default=WorkerConfig.kv_lease_s,
                   help="seconds staged KV waits for its decode worker before it is freed (default %(default)s)")
    p.add_argument("--kv-deadline-s", type=argtypes.positive_float, default=WorkerConfig.kv_deadline_s,
                   help="seconds a KV pull may take before the decode worker recomputes the prefill "
                        "(default %(default)s)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("profile", help="profile an engine's step times, fit the latency model, write a profile JSON")
    p.add_argument("--model", type=argtypes.model_dir, help="checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="vllm, or sim (profiles the simulator) (default %(default)s)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="engine sim: the profile to simulate (default %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"], help="device (default %(default)s)")
    p.add_argument("--kv-cache-mib", type=argtypes.positive_int, default=256,
                   help="KV cache size on CPU, MiB (default %(default)s)")
    p.add_argument("--max-num-seqs", type=argtypes.positive_int, default=64,
                   help="most requests batched at once (default %(default)s)")
    p.add_argument("--grid", default="full", choices=["full", "quick"],
                   help="probe grid; quick is what workers run at start (default %(default)s)")
    p.add_argument("--out", type=argtypes.output_file,
                   help="write the profile JSON here, usable as --sim-profile and `hfx sim --profile` (default: not written)")
    p.add_argument("--json", action="store_true", help="print the profile JSON instead of a table (default: a table)")
    p.set_defaults(func=cmd_profile)


def cmd_worker(args) -> int:
    from services.worker.config import WorkerConfig
    from services.worker.server import EngineFailed, serve

    config = WorkerConfig(
        model=default_model(args), instance_id=args.instance_id, host=args.host, port=args.port, engine=args.engine,
        role=args.role, device=args.device, redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        scheduler_address=args.scheduler or "", kv_cache_memory_bytes=args.kv_cache_mib * 1024 * 1024,
        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, tracing=args.tracing,
        session_coalesce_ms=args.session_coalesce_ms,
        cpu_cores=args.cpu_cores, cpu_huge_pages=args.cpu_huge_pages,
        metrics_port=args.metrics_port, sim_profile=args.sim_profile, sim_seed=args.sim_seed,
        profile_at_start=args.profile_at_start, weights_from=args.weights_from or "",
        weights_stall_timeout_s=args.weights_stall_timeout, weights_deadline_s=args.weights_deadline,
        weights_transport=args.weights_transport,
        serve_weights=args.serve_weights, weights_port=args.weights_port, standby=args.standby,
        standby_warm_reload=args.standby_warm_reload,
        kv_transfer=args.kv_transfer, kv_port=args.kv_port, kv_lease_s=args.kv_lease_s,
        kv_deadline_s=args.kv_deadline_s, pd_local_prefill=args.pd_local_prefill is not False,
    )
    try:
        runtime.run_service(serve(config))
    except EngineFailed as err:
        print(f"error: worker {args.instance_id}: {err}; exiting so that it is replaced", file=sys.stderr)
        return 3
    return 0


def cmd_profile(args) -> int:
    from services.worker.profile_cli import run_profile_command

    return run_profile_command(args, default_model(args))
