"""Scale-up time, decision to first token, with weights from storage (cold, warm) or a donor (D2D).

Each scenario is one scale-up decision: the clock starts just before a new `hfx worker` process is
spawned, and stops when a one-token greedy request to it returns. The worker reports its own
phases in the registry (`Instance.startup_s`), so the time splits into:

  process start   spawn -> the worker's serve() runs (interpreter, imports)
  vllm import     importing vLLM in the worker (the first time in that process)
  engine init     vLLM's AsyncLLM start (with dummy weights in every scenario but vllm-*)
  weight load     storage-*: reload from the checkpoint files; d2d: pull from the donor's stream
                  (vllm-*: inside engine init, not split)
  registration    engine ready -> registered in Redis
  other           the rest before registration (tracing, metrics, group reaper)
  discovery+token registered -> this script saw it in Redis and got the first token back

Scenarios: storage-cold (page cache of the checkpoint evicted with posix_fadvise DONTNEED;
`fincore` shows whether the kernel honoured it), storage-warm (files read just before), d2d
(a donor worker started first with --serve-weights; its serving slowdown while it streams is
measured with back-to-back greedy requests; the pull maps the donor's memory, "shm"), d2d-tcp (the
same over a TCP stream), vllm-cold / vllm-warm (vLLM's own loading path, for
the total only), standby-d2d (a worker started ahead with --standby, dummy weights, unregistered,
told its donor ahead with PrepareWeights as the scaler's pool does: it maps the donor's shared
files and faults them in, timed apart as "prepare"; the decision is its LoadWeights call with the
donor's address), standby-d2d-unprepared (the same without PrepareWeights: the pull maps the files
itself). Also in the same run: memcpy bandwidth (numpy copy between two pre-faulted
buffers of the checkpoint's size) and each transport alone (this process pulls from the donor
over shm and over TCP and checks every tensor, loading nothing; --no-transport-alone skips it).

Huge pages (--huge-pages, issue 12 fifth pass): each scale-up runs once per variant, the variants
taking turns within each of --repeats rounds, so they share the machine's conditions:
  default  the worker's default            on     --cpu-huge-pages (torch's and glibc's advice)
  off      --no-cpu-huge-pages             torch  off, plus THP_MEM_ALLOC_ENABLE=1 for the worker
  glibc    off, plus GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for the worker
(the donor runs with the worker's default). A variant may end in "/cold": the standby then skips
its rehearsal reload at start (--no-standby-warm-reload); a variant may be named more than once. With --serve-requests N, after its first token the
new worker also serves N concurrent greedy requests of --serve-tokens tokens (distinct prompts of
--serve-prompt-tokens), --serve-rounds times: TTFT and TPOT as the client sees them, then the
resident memory of its processes (RssAnon, of it AnonHugePages; RssShmem apart).

  python -m benchmarks.d2d_weights                         # the tiny model
  python -m services.cli model init --params 500M          # ~1 GB checkpoint, once
  python -m benchmarks.d2d_weights --params 500M --out benchmarks/d2d-500M.json
  python -m benchmarks.d2d_weights --params 500M --scenarios standby-d2d --donor-load-tokens 0 \
      --huge-pages off,on --repeats 4 --no-transport-alone --serve-requests 8

Needs the machine to itself (engines on --donor-cores / --receiver-cores).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from services.common import grpcutil, procs, redis_server, store
from services.common.keys import Keys
from services.common.model import ensure_default_model, parse_params
from services.common.pb.hfx.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.worker.weights import checkpoint
from services.worker.weights.tcp import ReceiveStats
from services.worker.weights.transport import transport_for

PROMPT = [1, 43, 343, 1515, 1196, 15, 262, 1294]
SCENARIOS = ("storage-cold", "storage-warm", "d2d", "d2d-tcp", "standby-d2d", "standby-d2d-unprepared", "vllm-cold",
             "vllm-warm")
# The new worker's flags and extra environment per huge-pages variant (see the docstring).
HUGE_PAGES = {
    "default": ((), {}),
    "on": (("--cpu-huge-pages",), {}),
    "off": (("--no-cpu-huge-pages",), {}),
    "torch": (("--no-cpu-huge-pages",), {"THP_MEM_ALLOC_ENABLE": "1"}),
    "glibc": (("--no-cpu-huge-pages",), {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
}


def memcpy_gbps(nbytes: int, repeats: int = 3) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty(nbytes, dtype=np.uint8)
    dst.fill(0)  # both touched: page faults are not part of the copy
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def resident_bytes(files: list[Path]) -> int:
    total = 0
    for f in files:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(f)],
                             capture_output=True, text=True, check=True).stdout.strip()
        total += int(out or 0)
    return total


def evict(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


class Run:
    def __init__(self, args) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="hfx-d2d-bench-"))
        self.redis_port = args.redis_port or procs.free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.prefix = f"d2d-{uuid.uuid4().hex[:6]}"
        self.keys = Keys(self.prefix)
        self.redis = store.connect_sync(self.redis_url)
        self.procs: list = []
        self._donor: common_pb2.Instance | None = None

    def donor(self, files: list[Path]) -> common_pb2.Instance:
        """The serving peer, started once (its own start is not measured)."""
        if self._donor is None:
            warm(files)
            proc = self.spawn_worker("donor", self.args.donor_cores, "--serve-weights")
            self._donor = self.wait_registered("donor", proc, self.args.timeout, donor=True)
            first_token_s(self._donor.address, 4)  # the donor's first request path, warmed
        return self._donor

    def start_redis(self) -> None:
        self.procs.append(redis_server.start(self.redis_port, self.home, self.home / "redis.log", die_with_parent=True))
        redis_server.wait_ready(self.redis_url)

    def spawn_worker(self, name: str, cores: str, *extra: str, env: dict[str, str] | None = None):
        cmd = procs.hfx_command(
            "worker", "--model", self.args.model, "--instance-id", name, "--redis-url", self.redis_url,
            "--redis-prefix", self.prefix, "--no-profile-at-start", "--cpu-cores", cores,
            "--kv-cache-mib", str(self.args.kv_cache_mib), *extra)
        proc = procs.spawn(cmd, self.home / f"{name}.log", env=env, die_with_parent=True)
        self.procs.append(proc)
        return proc

    def wait_registered(self, name: str, proc, timeout_s: float, donor: bool = False) -> common_pb2.Instance:
        """The registry entry once there (with donor: once it advertises its weight stream)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            blob = self.redis.hget(self.keys.instance(name), "pb")
            if blob:
                info = common_pb2.Instance.FromString(blob)
                if not donor or info.weights_address:
                    return info
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}; see {self.home / (name + '.log')}")
            time.sleep(0.02)
        raise TimeoutError(f"worker {name} not registered after {timeout_s:.0f}s")

    def stop(self, proc) -> None:
        procs.stop_group(proc.pid, timeout_s=30.0)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                procs.stop_group(p.pid, timeout_s=30.0)


def first_token_s(address: str, max_tokens: int = 1, timeout_s: float = 120.0, tokens: list | None = None
                  ) -> tuple[float, list[float]]:
    """Seconds to the last chunk of a greedy request, and each token's arrival time (monotonic);
    the token ids are appended to `tokens` when given."""
    with grpcutil.sync_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        req = worker_pb2.WorkerGenerateRequest(
            request_id=uuid.uuid4().hex, prompt_token_ids=PROMPT,
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        t0 = time.monotonic()
        arrivals = []
        for chunk in stub.Generate(req, timeout=timeout_s):
            arrivals.extend([time.monotonic()] * len(chunk.token_ids))
            if tokens is not None:
                tokens.extend(chunk.token_ids)
        return time.monotonic() - t0, arrivals


def wait_grpc(address: str, proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpcutil.sync_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"standby worker exited with {proc.returncode}")
            try:
                stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"standby worker at {address} not up after {timeout_s:.0f}s")


def scale_up(run: Run, name: str, cores: str, *extra: str, standby_load: str | None = None,
             prepare: bool = False, flags: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    """One scale-up. standby_load: start a standby worker first (not timed), and let the decision be
    its LoadWeights call with this donor address; prepare: before the decision, tell the standby
    that donor (PrepareWeights, timed apart). flags, env: the new worker's (standby's) own flags and
    extra environment."""
    prepared: dict = {}
    if standby_load is not None:
        port = procs.free_port()
        proc = run.spawn_worker(name, cores, "--standby", "--port", str(port), *flags, env=env)
        wait_grpc(f"127.0.0.1:{port}", proc, run.args.timeout)
        if prepare:
            t = time.monotonic()
            with grpcutil.sync_channel(f"127.0.0.1:{port}") as channel:
                reply = worker_pb2_grpc.WorkerStub(channel).PrepareWeights(
                    worker_pb2.PrepareWeightsRequest(donor_address=standby_load), timeout=run.args.timeout)
            prepared = {"prepared": reply.prepared, "detail": reply.detail, "prepare_s": reply.seconds,
                        "prepare_call_s": time.monotonic() - t}
            time.sleep(2.0)  # the decision comes later than the preparation, as in the pool
    decided_unix = time.time()
    t0 = time.monotonic()
    if standby_load is None:
        proc = run.spawn_worker(name, cores, *extra, *flags, env=env)
    else:
        with grpcutil.sync_channel(f"127.0.0.1:{port}") as channel:
            worker_pb2_grpc.WorkerStub(channel).LoadWeights(
                worker_pb2.LoadWeightsRequest(donor_address=standby_load), timeout=run.args.timeout)
    info = run.wait_registered(name, proc, run.args.timeout)
    seen = time.monotonic()
    token_s, _ = first_token_s(info.address)
    total = time.monotonic() - t0
    s = dict(info.startup_s)
    process_start = s["entered_unix_s"] - decided_unix
    if standby_load is not None:  # process and engine were up before the decision
        process_start, s["engine_init_s"] = 0.0, 0.0
    registered_at = info.registered_unix_s - decided_unix
    engine, weights, reg = s.get("engine_init_s", 0.0), s.get("weight_load_s", 0.0), s.get("registration_s", 0.0)
    imports = s.get("vllm_import_s", 0.0) if standby_load is None else 0.0
    row = {
        "total_s": total, "process_start_s": process_start, "vllm_import_s": imports, "engine_init_s": engine,
        "weight_load_s": weights, "registration_s": reg,
        "other_s": registered_at - process_start - imports - engine - weights - reg,
        "discovery_and_token_s": total - registered_at, "first_token_call_s": token_s,
        "seen_after_registered_s": seen - t0 - registered_at, "weights_source": info.weights_source,
        "weight_load_window_unix": [s.get("weight_load_started_unix_s"), s.get("weight_load_ended_unix_s")],
        "proc": proc, "address": info.address, **prepared,
    }
    return row


class DonorLoad:
    """Back-to-back greedy requests to the donor; token arrival times show its slowdown."""

    def __init__(self, address: str, tokens: int) -> None:
        self.address, self.tokens = address, tokens
        self.gaps: list[tuple[float, float]] = []  # (unix time of the token, gap to the previous one in s)
        self.outputs: list[tuple[float, float, tuple[int, ...]]] = []  # (start, end unix, greedy tokens)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> DonorLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        offset = time.time() - time.monotonic()
        while not self._stop.is_set():
            tokens: list[int] = []
            started = time.time()
            _, arrivals = first_token_s(self.address, self.tokens, tokens=tokens)
            self.gaps.extend((b + offset, b - a) for a, b in zip(arrivals, arrivals[1:]))
            self.outputs.append((started, time.time(), tuple(tokens)))

    def outputs_identical(self, lo: float, hi: float) -> tuple[bool, int]:
        """Whether every request that overlapped [lo, hi] produced the same greedy tokens as the
        first request (the same prompt each time), and how many overlapped."""
        reference = self.outputs[0][2] if self.outputs else ()
        during = [out for start, end, out in self.outputs if end >= lo and start <= hi]
        return all(out == reference for out in during), len(during)

    def tpot_ms(self, lo: float | None = None, hi: float | None = None) -> tuple[float, int]:
        sel = [g for t, g in self.gaps if (lo is None or t >= lo) and (hi is None or t <= hi)]
        return (statistics.mean(sel) * 1000 if sel else float("nan")), len(sel)


def serve_load(address: str, requests: int, tokens: int, prompt_tokens: int, rounds: int, seed: int) -> dict:
    """`rounds` x `requests` concurrent greedy requests of `tokens` tokens, distinct prompts (no
    prefix-cache hits): TTFT and TPOT (first to last token / (tokens - 1)) as the client sees them."""
    ttft_ms: list[float] = []
    tpot_ms: list[float] = []
    for r in range(rounds):
        results: list[tuple[float, list[float]]] = [(0.0, [])] * requests

        def one(i: int) -> None:
            base = (seed * 1000 + r * requests + i) * 7919
            prompt = [1] + [10 + (base + k * 31) % 1000 for k in range(prompt_tokens - 1)]
            t0 = time.monotonic()
            arrivals: list[float] = []
            with grpcutil.sync_channel(address) as channel:
                req = worker_pb2.WorkerGenerateRequest(
                    request_id=uuid.uuid4().hex, prompt_token_ids=prompt,
                    sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
                for chunk in worker_pb2_grpc.WorkerStub(channel).Generate(req, timeout=300):
                    arrivals.extend([time.monotonic()] * len(chunk.token_ids))
            results[i] = (t0, arrivals)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t0, arrivals in results:
            ttft_ms.append((arrivals[0] - t0) * 1000)
            if len(arrivals) > 1:
                tpot_ms.append((arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) * 1000)
    return {"requests": requests * rounds, "tokens": tokens, "prompt_tokens": prompt_tokens,
            "ttft_ms_mean": statistics.mean(ttft_ms), "ttft_ms_p50": statistics.median(ttft_ms),
            "ttft_ms_max": max(ttft_ms), "tpot_ms_mean": statistics.mean(tpot_ms),
            "tpot_ms_p50": statistics.median(tpot_ms), "tpot_ms_max": max(tpot_ms)}


def group_memory(pgid: int) -> dict:
    """Resident memory of every process in the group (the worker and its vLLM engine core), kB
    summed: RssAnon, of it AnonHugePages (smaps_rollup), and RssShmem (the donor's mapped pages)."""
    total = {"processes": 0, "rss_anon_kb": 0, "anon_huge_kb": 0, "rss_shmem_kb": 0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
            rollup = Path(f"/proc/{entry}/smaps_rollup").read_text()
        except (OSError, ProcessLookupError):
            continue
        fields = {line.split(":")[0]: line.split()[1] for line in (status + rollup).splitlines()
                  if ":" in line and len(line.split()) >= 2}
        total["processes"] += 1
        total["rss_anon_kb"] += int(fields.get("RssAnon", 0))
        total["anon_huge_kb"] += int(fields.get("AnonHugePages", 0))
        total["rss_shmem_kb"] += int(fields.get("RssShmem", 0))
    return total


def transport_alone(address: str, model_dir: Path, mode: str) -> dict:
    index_list = checkpoint.read_index(model_dir)
    index = {t.name: t for t in index_list}
    stats = ReceiveStats()
    t0 = time.monotonic()
    transport = transport_for("cpu", mode)
    for _ in transport.receive(address, checkpoint.identity(model_dir, index_list), index, stats=stats):
        pass
    elapsed = time.monotonic() - t0
    return {"bytes": stats.bytes, "seconds": elapsed, "gbps": stats.bytes / elapsed / 1e9,
            "recv_s": stats.recv_s, "crc_s": stats.crc_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint dir (default: the tiny model, or the --params one)")
    p.add_argument("--params", type=parse_params, help="use the model `hfx model init --params N` builds (built if absent)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, from " + ", ".join(SCENARIOS) + " (default: all)")
    p.add_argument("--donor-cores", default="1", help="cores of the donor's engine (default %(default)s)")
    p.add_argument("--receiver-cores", default="0", help="cores of the new worker's engine (default %(default)s)")
    p.add_argument("--kv-cache-mib", type=int, default=256, help="KV cache per engine, MiB (default %(default)s)")
    p.add_argument("--donor-load-tokens", type=int, default=32,
                   help="tokens per background request to the donor during d2d; 0 = no load (default %(default)s)")
    p.add_argument("--redis-port", type=int, default=0, help="port for the run's Redis; 0 = a free one (default 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a worker may take to register (default %(default)s)")
    p.add_argument("--huge-pages", default="default",
                   help="comma-separated variants of the new worker, from " + ", ".join(HUGE_PAGES)
                        + " (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="rounds over scenarios x variants (default %(default)s)")
    p.add_argument("--transport-alone", action=argparse.BooleanOptionalAction, default=True,
                   help="after each d2d scale-up, time each transport alone (default on)")
    p.add_argument("--serve-requests", type=int, default=0,
                   help="after the first token, this many concurrent requests to the new worker; 0 = none (default 0)")
    p.add_argument("--serve-tokens", type=int, default=32, help="output tokens per such request (default %(default)s)")
    p.add_argument("--serve-prompt-tokens", type=int, default=128, help="prompt tokens per such request (default %(default)s)")
    p.add_argument("--serve-rounds", type=int, default=2, help="rounds of such requests (default %(default)s)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here (default: print only)")
    args = p.parse_args(argv)
    if args.model is None:
        args.model = str(ensure_default_model(params=args.params))
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}")
    variants = [v for v in args.huge_pages.split(",") if v]
    if not variants or {v.partition("/")[0] for v in variants} - set(HUGE_PAGES) or \
            {v.partition("/")[2] for v in variants} - {"", "cold"}:
        p.error(f"--huge-pages: expected variants from {sorted(HUGE_PAGES)}")
    model_dir = Path(args.model)
    files = checkpoint.weight_files(model_dir)
    size = sum(f.stat().st_size for f in files)
    result: dict = {"model": str(model_dir), "checkpoint_bytes": size, "runs": [],
                    "thp": {knob: Path(f"/sys/kernel/mm/transparent_hugepage/{knob}").read_text().strip()
                            for knob in ("enabled", "defrag")}}
    print(f"model {model_dir} ({size / 1e9:.3f} GB in {len(files)} file(s))", flush=True)
    result["memcpy_gbps"] = memcpy_gbps(size)
    print(f"memcpy bandwidth: {result['memcpy_gbps']:.2f} GB/s", flush=True)

    run = Run(args)
    try:
        run.start_redis()
        for repeat in range(args.repeats):
            for name in scenarios:
                for variant in variants:
                    i = len(result["runs"])
                    row = {"scenario": name, "huge_pages": variant, "repeat": repeat,
                           "load_at_start": os.getloadavg()[0],
                           **run_scenario(run, name, i, model_dir, files, result, variant)}
                    result["runs"].append(row)
                    print(f"{name} [{variant}]: "
                          + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
                          flush=True)
    finally:
        run.close()
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_scenario(run: Run, name: str, i: int, model_dir: Path, files: list[Path], result: dict,
                 variant: str = "default") -> dict:
    args = run.args
    extra: list[str] = []
    cache: dict = {}
    if name.endswith("-cold"):
        cache["resident_before_bytes"] = resident_bytes(files)
        evict(files)
        cache["resident_after_evict_bytes"] = resident_bytes(files)
        cache["evict_honoured"] = cache["resident_after_evict_bytes"] < 0.05 * sum(f.stat().st_size for f in files)
    elif name.endswith("-warm"):
        warm(files)
        cache["resident_bytes"] = resident_bytes(files)
    if name.startswith("storage-"):
        extra = ["--weights-from", "storage"]
    donor_info = load = None
    d2d = name in ("d2d", "d2d-tcp", "standby-d2d", "standby-d2d-unprepared")
    if d2d:
        donor_info = run.donor(files)
        extra = ["--weights-from", donor_info.weights_address]
        if name == "d2d-tcp":
            extra += ["--weights-transport", "tcp"]
        if args.donor_load_tokens:
            load = DonorLoad(donor_info.address, args.donor_load_tokens).start()
            time.sleep(5.0)  # a baseline before the decision
    standby = donor_info.weights_address if donor_info is not None and name.startswith("standby-") else None
    base, _, cold = variant.partition("/")
    flags, env = HUGE_PAGES[base]
    if cold:
        flags = (*flags, "--no-standby-warm-reload")
    row = scale_up(run, f"new{i}", args.receiver_cores, *extra, standby_load=standby, prepare=name == "standby-d2d",
                   flags=flags, env=env)
    proc = row.pop("proc")
    if args.serve_requests:
        row["serving"] = serve_load(row["address"], args.serve_requests, args.serve_tokens, args.serve_prompt_tokens,
                                    args.serve_rounds, seed=i)
        row["memory"] = group_memory(proc.pid)
    row["page_cache"] = cache
    if d2d:
        if load is not None:
            load.stop()
            lo, hi = row["weight_load_window_unix"]
            row["donor_tpot_ms_before"], row["donor_tokens_before"] = load.tpot_ms(hi=lo - 1e-3 if lo else None)
            row["donor_tpot_ms_during_pull"], row["donor_tokens_during_pull"] = load.tpot_ms(lo, hi)
            row["donor_outputs_unchanged_during_pull"], row["donor_requests_during_pull"] = load.outputs_identical(lo, hi)
        if args.transport_alone:
            row["transport_alone"] = {mode: transport_alone(donor_info.weights_address, model_dir, mode)
                                      for mode in ("shm", "tcp")}
        row["pull_gbps"] = result["checkpoint_bytes"] / row["weight_load_s"] / 1e9 if row["weight_load_s"] else None
    row["pull_report"] = pull_report(run.home / f"new{i}.log")
    run.stop(proc)
    return row


def pull_report(log_path: Path) -> dict:
    """The worker's own report of its weight load (its log's last "weights: {...}" line): phases
    (stream, CRC), minor page faults in the engine process, whether the pages were mapped ahead."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if "weights: {" in line]
    if not lines:
        return {}
    report = ast.literal_eval(lines[-1].split("weights: ", 1)[1])
    return {k: report.get(k) for k in ("source", "transport", "premapped", "load_s", "stream_s", "crc_s",
                                      "connect_s", "minor_faults", "failure") if k in report}


def print_table(result: dict) -> None:
    cols = ("process_start_s", "vllm_import_s", "engine_init_s", "weight_load_s", "registration_s", "other_s",
            "discovery_and_token_s", "total_s")
    print()
    print(f"checkpoint {result['checkpoint_bytes'] / 1e9:.3f} GB; memcpy {result['memcpy_gbps']:.2f} GB/s; "
          f"THP {result['thp']}")
    print("| scenario | huge pages | round | " + " | ".join(c[:-2].replace("_", " ") + " s" for c in cols)
          + " | weights from |")
    print("|---|---|---:|" + "---:|" * len(cols) + "---|")
    for row in result["runs"]:
        print(f"| {row['scenario']} | {row['huge_pages']} | {row['repeat'] + 1} | "
              + " | ".join(f"{row[c]:.2f}" for c in cols) + f" | {row['weights_source']} |")
    print()
    print("| scenario | huge pages | round | load at start | weight load s | of it CRC s | faults in the pull | total s "
          "| TTFT mean / max ms | TPOT mean / max ms | RssAnon MiB | of it huge MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["runs"]:
        pull, serving, mem = row.get("pull_report") or {}, row.get("serving"), row.get("memory")
        served = (f"{serving['ttft_ms_mean']:.0f} / {serving['ttft_ms_max']:.0f} | "
                  f"{serving['tpot_ms_mean']:.1f} / {serving['tpot_ms_max']:.1f}") if serving else "- | -"
        memory = f"{mem['rss_anon_kb'] / 1024:.0f} | {mem['anon_huge_kb'] / 1024:.0f}" if mem else "- | -"
        crc, faults = pull.get("crc_s"), pull.get("minor_faults")
        print(f"| {row['scenario']} | {row['huge_pages']} | {row['repeat'] + 1} | {row['load_at_start']:.2f} | "
              f"{row['weight_load_s']:.2f} | {'-' if crc is None else f'{crc:.3f}'} | "
              f"{'-' if faults is None else f'{faults:,}'} | **{row['total_s']:.2f}** | {served} | {memory} |")
    for row in result["runs"]:
        name = f"{row['scenario']} [{row['huge_pages']}] round {row['repeat'] + 1}"
        if row["page_cache"]:
            print(f"{name} page cache: {row['page_cache']}")
        if "prepared" in row:
            print(f"{name}: prepared ahead of the decision: {row['prepared']} ({row['detail']}; {row['prepare_s']:.3f} s "
                  f"in the engine, call {row['prepare_call_s']:.3f} s)")
        if row.get("pull_report"):
            print(f"{name}: the engine's report of its pull: {row['pull_report']}")
        if "transport_alone" in row:
            alone = ", ".join(f"{mode} {t['gbps']:.2f} GB/s ({t['gbps'] / result['memcpy_gbps']:.0%} of memcpy)"
                              for mode, t in row["transport_alone"].items())
            print(f"{name}: pull into vLLM {row['pull_gbps']:.2f} GB/s end to end (weight load phase, "
                  f"{row['weights_source']}); transports alone, with checks: {alone}")
        if "donor_tpot_ms_before" in row:
            print(f"{name}: donor TPOT {row['donor_tpot_ms_before']:.2f} ms before ({row['donor_tokens_before']} tokens), "
                  f"{row['donor_tpot_ms_during_pull']:.2f} ms during the pull ({row['donor_tokens_during_pull']} tokens); "
                  f"its {row['donor_requests_during_pull']} requests overlapping the pull gave the same greedy tokens "
                  f"as before: {row['donor_outputs_unchanged_during_pull']}")


if __name__ == "__main__":
    sys.exit(main())
