"""`python -m benchmarks.roles live`: role changes on the live mesh (see benchmarks/roles.py)."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from services import argtypes
from services.common import convert, grpcutil, procs
from services.common.domain import Role
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from services.local import cluster

PROMPT_TOKENS = 400   # split P -> D by the HFX policy (long enough that its prefill costs more than the transfer)


def add_live_parser(sub) -> None:
    p = sub.add_parser("live", help="decision to first request served in the new role, on the real mesh")
    p.add_argument("--engine", default="sim", choices=["sim", "vllm"], help="workers' engine (default %(default)s)")
    p.add_argument("--prefill", type=argtypes.positive_int, default=2, help="default %(default)s")
    p.add_argument("--decode", type=argtypes.positive_int, default=2, help="default %(default)s")
    p.add_argument("--changes", type=argtypes.positive_int, default=6, help="default %(default)s")
    p.add_argument("--gap-s", type=argtypes.positive_float, default=4.0, help="between changes (default %(default)s)")
    p.add_argument("--clients", type=argtypes.positive_int, default=4, help="concurrent streams (default %(default)s)")
    p.add_argument("--max-tokens", type=argtypes.positive_int, default=32, help="default %(default)s")
    p.set_defaults(func=live_main)


class Load:
    """Client streams through the router, one request after another per client."""

    def __init__(self, router: str, clients: int, max_tokens: int) -> None:
        self.router, self.max_tokens = router, max_tokens
        self.results: list[dict] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def _run(self, client: int) -> None:
        with grpc.insecure_channel(self.router) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            i = 0
            while not self.stop.is_set():
                req = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=self.max_tokens,
                                                                                    ignore_eos=True))
                req.token_ids.ids[:] = [100 + (client * 7919 + i * 31 + k) % 1500 for k in range(PROMPT_TOKENS)]
                row = {"start": time.time(), "tokens": [], "final": None, "error": ""}
                try:
                    for msg in stub.Generate(req, timeout=120):
                        if msg.HasField("delta"):
                            row["tokens"].extend([time.time()] * len(msg.delta.token_ids))
                        else:
                            row["final"] = msg.final
                except grpc.RpcError as err:
                    row["error"] = f"{err.code().name}: {err.details()}"
                self.results.append(row)
                i += 1


def served_in_role(results: list[dict], instance: str, role: Role, after_s: float) -> float | None:
    """When `instance` first delivered a token in `role` after `after_s`: P's token (the client's
    first) for prefill, its first decoded token (the client's second) for decode."""
    mark = f"{role.value} -> {instance} "
    idx = 0 if role is Role.PREFILL else 1
    times = [r["tokens"][idx] for r in results if r["final"] is not None and mark in r["final"].placement_reason
             and len(r["tokens"]) > idx and r["tokens"][idx] > after_s]
    return min(times) if times else None


def first_transfers(state, pairs: int) -> None:
    """Per link: its warm-up (the first transfer between the two, which the first real request
    would pay without linking) against a transfer over the same pair once linked."""
    import asyncio

    from services.common import store
    from services.common.keys import Keys
    from services.common.pb.hfx.v1 import worker_pb2_grpc
    from services.scaler.linking import warm_up

    async def run() -> list[tuple[str, str, float, float]]:
        cluster = store.ClusterStore(store.connect(state.redis_url), Keys(state.redis_prefix))
        deadline = time.monotonic() + 120
        while len(links := await cluster.links()) < pairs and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        address = {i.instance_id: i.address for i in await cluster.instances()}
        out = []
        for (p, d), rec in sorted(links.items()):
            async with grpcutil.aio_channel(address[p]) as pc, grpcutil.aio_channel(address[d]) as dc:
                again = await warm_up(worker_pb2_grpc.WorkerStub(pc), worker_pb2_grpc.WorkerStub(dc), 30.0)
            out.append((p, d, rec["warmup_ms"], again))
        return out

    rows = asyncio.run(run())
    for p, d, first, again in rows:
        print(f"  link {p} -> {d}: first transfer (the warm-up) {first:.1f} ms, once linked {again:.1f} ms "
              f"(32-token prefill leg + decode leg pulling its KV)")
    if rows:
        print(f"first transfer over a new pair: median {statistics.median(r[2] for r in rows):.1f} ms unlinked "
              f"(paid by the warm-up) vs {statistics.median(r[3] for r in rows):.1f} ms once linked")


def live_main(args) -> int:
    home = Path(tempfile.mkdtemp(prefix="hfx-roles-"))
    opts = cluster.UpOptions(home=home, model=str(ensure_default_model()), workers=0, router_port=procs.free_port(),
                             redis_url=None, policy="hfx", engine=args.engine, tracing="off", timeout_s=600,
                             prefill=args.prefill, decode=args.decode,
                             # vLLM: no start-up profile (minutes with 3 engines on 2 cores; not measured here)
                             worker_args=("--sim-profile=cpu-tiny",) if args.engine == "sim" else ("--no-profile-at-start",))
    label = "SIMULATED engines" if args.engine == "sim" else "vLLM CPU engines"
    print(f"live mesh: router, scheduler (hfx), scaler, Redis; {args.prefill} prefill + {args.decode} decode workers "
          f"({label}); {args.clients} client streams of {PROMPT_TOKENS}-token prompts x {args.max_tokens} tokens")
    state = cluster.up(opts)
    rows = []
    try:
        first_transfers(state, args.prefill * args.decode)
        stub = scaler_pb2_grpc.ScalerStub(grpcutil.sync_channel(state.scaler))
        # flip the last decode and the last prefill worker in turn: D -> prefill, back, P -> decode, back
        d, p = f"hfx-d{args.decode - 1}", f"hfx-p{args.prefill - 1}"
        plan = [(d, Role.PREFILL), (d, Role.DECODE), (p, Role.DECODE), (p, Role.PREFILL)]
        with Load(state.router, args.clients, args.max_tokens) as load:
            time.sleep(args.gap_s)
            for k in range(args.changes):
                instance, role = plan[k % len(plan)]
                decided = time.time()
                reply = stub.SetRole(scaler_pb2.ScalerSetRoleRequest(
                    instance_id=instance, role=convert.role_to_pb(role), reason=f"benchmark change {k}"), timeout=60)
                time.sleep(args.gap_s)
                rows.append((instance, role, decided, reply))
            time.sleep(1.0)
        results = list(load.results)
    finally:
        cluster.down(home, quiet=True)
    firsts = []
    for instance, role, decided, reply in rows:
        first = served_in_role(results, instance, role, decided)
        ms = None if first is None else (first - decided) * 1000.0
        firsts += [ms] if ms is not None else []
        print(f"  {instance} -> {role.value}: worker (registry write) {reply.role_s * 1000:.0f} ms, linking "
              f"{reply.link_s * 1000:.0f} ms ({reply.links} links), {reply.inflight} legs finishing there; "
              f"decision to first request served in the new role: {'-' if ms is None else f'{ms:.0f} ms'}")
    failed = [r for r in results if r["error"] or r["final"] is None or len(r["tokens"]) != args.max_tokens]
    print(f"changes {len(rows)}; decision to first served in the new role: median "
          f"{statistics.median(firsts) if firsts else float('nan'):.0f} ms, max {max(firsts, default=float('nan')):.0f} ms "
          f"({len(firsts)} of {len(rows)} seen); requests {len(results)}, failed or short {len(failed)}")
    for r in failed[:5]:
        print(f"  failed: {r['error'] or 'incomplete'} ({len(r['tokens'])} tokens)")
    return 0 if not failed else 1


def add_mix_parser(sub) -> None:
    from benchmarks.roles_workload import add_mix_arguments

    p = sub.add_parser("live-mix", help="fixed P:D vs role changes under the shifting mix, on the real mesh")
    p.add_argument("--instances", type=argtypes.positive_int, default=16, help="default %(default)s")
    p.add_argument("--modes", nargs="+", choices=["fixed", "roles"], default=["fixed", "roles"],
                   help="run the fixed ratio, the role policy (scheduler --role-changes), or both (default both)")
    p.add_argument("--engine", default="sim", choices=["sim", "vllm"],
                   help="workers' engine (default %(default)s). vllm: real vLLM CPU workers, each profiled at "
                        "start; --profile then only sets the SLOs (multiples of its unloaded latency) and "
                        "should be a measured one (`hfx profile --out FILE`)")
    add_mix_arguments(p)
    p.set_defaults(func=mix_main)


_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def _changes(log_dir: Path, t0: float) -> list[str]:
    """Each role change the scheduler decided and the scaler carried out, from their logs: when
    (seconds into the run), what, and the scaler's time for it (the worker's registry write plus
    the re-linking with a warm-up transfer per new link)."""
    import re
    from datetime import datetime, timezone

    carried = re.compile(r"role of (\S+): (\w+) -> (\w+) .*: worker (\d+) ms, links (\d+) ms, (\d+) link")
    out = []
    for line in (log_dir / "scaler.log").read_text().splitlines():
        m = carried.search(line)
        if m is None:
            continue
        at = datetime.strptime(line[:23], _LOG_TIME).replace(tzinfo=timezone.utc).timestamp() - t0
        iid, was, now, worker_ms, links_ms, links = m.groups()
        out.append(f"t={at:6.1f}s {iid} {was} -> {now}: worker {worker_ms} ms + re-linking {links_ms} ms "
                   f"({links} links) = {int(worker_ms) + int(links_ms)} ms")
    return out


def mix_main(args) -> int:
    """The shifting mix sent open-loop through the router of a fresh `hfx up` per mode."""
    import asyncio
    import json

    from benchmarks.roles_workload import print_attainment, shifting_mix
    from services.bench.cli import _classes_yaml
    from services.bench.live import LiveOptions, run_live
    from services.bench.targets import make_target
    from services.sim.runner import pd_roles

    workload, phases, reqs, phase_of, _, _ = shifting_mix(args)
    roles = pd_roles(args.ratio, args.instances)
    n_p, n_d = roles.count(Role.PREFILL), roles.count(Role.DECODE)
    model = str(ensure_default_model())
    vocab = int(json.loads((Path(model) / "config.json").read_text()).get("vocab_size", 32000))
    profile = args.profile if not Path(args.profile).is_file() else str(Path(args.profile).resolve())
    engines = (f"SIMULATED engines (profile {args.profile})" if args.engine == "sim"
               else f"vLLM CPU engines (real inference; SLOs scaled from profile {args.profile})")
    print(f"live mesh: router, scheduler (hfx), scaler, Redis real; {n_p} prefill + {n_d} decode workers, "
          f"{engines}; requests sent open-loop at their arrival times")
    for mode in args.modes:
        home = Path(tempfile.mkdtemp(prefix=f"hfx-roles-{mode}-"))
        classes = home / "classes.yaml"
        _classes_yaml(workload, classes)
        opts = cluster.UpOptions(home=home, model=model, workers=0, router_port=procs.free_port(), redis_url=None,
                                 policy="hfx", engine=args.engine, tracing="off", timeout_s=600, classes=str(classes),
                                 metrics=False, prefill=n_p, decode=n_d, pd_local_prefill=args.local_prefill,
                                 sim_profile=profile, role_changes=mode == "roles")
        state = cluster.up(opts)
        try:
            started = time.time()

            async def run():
                target = make_target(state.router)
                try:
                    return await run_live(target, reqs, vocab, args.seed, LiveOptions(), instances=args.instances)
                finally:
                    await target.close()
            result = asyncio.run(run())
            wall = time.time() - started
            changes = _changes(Path(state.log_dir), started)
        finally:
            cluster.down(home, quiet=True)
        label = "fixed" if mode == "fixed" else "role changes"
        failed = sum(1 for r in result.records if r.verdict == "failed")
        print_attainment(label, phases, result.records, phase_of, f"  ({wall:.0f} s wall, {failed} failed)")
        print(f"  role changes: {len(changes)}")
        for line in changes:
            print(f"   {line}")
    return 0
