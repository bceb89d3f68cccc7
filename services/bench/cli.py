"""`hfx bench`: a sweep of policies x rates on a workload, in the simulator (`--sim`, the default;
services/sim runs it) or live (`--target ADDRESS`, `--live-policies P ...`). Both report through
services/report, so the table, JSON records and plots mean the same either way."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from services import argtypes
from services.bench.live import LiveOptions, Unloaded, probe, run_live, with_slos
from services.bench.targets import make_target
from services.report import tables
from services.report.metrics import RunReport, report
from services.sim import cli as sim_cli
from services.sim.workload import Workload, as_live, generate, load_workload

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def add_bench_command(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="sweep policies x rates on a workload: --sim, or live (--target)")
    sim_cli.add_common_arguments(bench, rates_default=[10.0, 20.0, 40.0], policies_default=["fcfs", "hfx"])
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--sim", action="store_true", help="run in the simulator (the default)")
    mode.add_argument("--target", type=argtypes.target_address,
                      help="live: the HFX router (grpc://HOST:PORT or HOST:PORT) or an OpenAI-compatible server "
                      "(http://HOST:PORT); the policy is the target's (default: none, simulate)")
    add_live_arguments(bench, mode)
    fam = bench.add_argument_group("workload family (--sim --family N)")
    fam.add_argument("--family", type=argtypes.non_negative_int, default=0, metavar="N",
                     help="run every policy over N random workloads of family --seed, each at rates from light "
                     "load to overload (multiples of its estimated capacity), and compare hfx with the best "
                     "baseline (default %(default)s: off)")
    fam.add_argument("--rate-factors", nargs="+", type=argtypes.positive_float, default=None, metavar="X",
                     help="--family: rates as multiples of each workload's estimated capacity "
                     "(default: services/sim/family.py RATE_FACTORS)")
    fam.add_argument("--goodput-steps", type=argtypes.non_negative_int, default=0, metavar="K",
                     help="--family: refine the goodput of hfx and of the best baseline(s) by K bisection steps "
                     "(geometric) between the last grid rate at >= 90%% and the next (default %(default)s: grid only)")
    fam.add_argument("--worst", type=argtypes.non_negative_int, default=5,
                     help="--family: how many worst workloads to write out (default %(default)s)")
    fam.add_argument("--family-out", default="family-worst", metavar="DIR",
                     help="--family: where the worst workloads' YAML goes (default %(default)s)")
    bench.set_defaults(func=run_bench, pd="")   # `hfx bench` runs colocated clusters


def run_bench(args: argparse.Namespace) -> int:
    if args.target or args.live_policies:
        args.profile_given = args.profile is not None
        args.policy = args.policy or args.policies_default
        return run_live_bench(args)
    if args.family:
        return sim_cli.run_family(args)
    return sim_cli.run_sweep(args)


def add_live_arguments(bench: argparse.ArgumentParser, mode) -> None:
    """The live flags; `mode` is the bench's mutually exclusive group (--sim | --target)."""
    from services.scheduler.policy import policy_names

    mode.add_argument("--live-policies", nargs="+", metavar="POLICY", choices=policy_names(),
                      help="live: for each policy start a local cluster (hfx up --policy P), bench it, stop it "
                      "(default: none, simulate)")
    g = bench.add_argument_group("live runs (--target / --live-policies)")
    g.add_argument("--engine", default="sim", choices=["sim", "vllm"],
                   help="--live-policies: worker engine (default %(default)s)")
    g.add_argument("--workers", type=argtypes.positive_int, default=None,
                   help="--live-policies: workers (default: --instances)")
    g.add_argument("--sim-profile", default=None, type=argtypes.sim_profile,
                   help="--live-policies with --engine sim: the workers' profile (default: --profile, else cpu-tiny)")
    g.add_argument("--label", default="", help="--target: the policy name in records (default: target)")
    g.add_argument("--model", default=None, type=argtypes.model_dir,
                   help="checkpoint dir: vocabulary and max_model_len of the target (default: the built-in tiny model)")
    g.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                   help="context of the target; 0 = the model's (default %(default)s)")
    g.add_argument("--target-model", default="",
                   help="HTTP targets: the model name (default: the first in /v1/models)")
    g.add_argument("--api-key", default="", help="the target's API key (default: none)")
    g.add_argument("--probes", type=argtypes.positive_int, default=3,
                   help="sequential probes per class for the unloaded latency, counted after "
                   "max(2, --workers or --instances) warm-ups (default %(default)s)")
    g.add_argument("--max-inflight", type=argtypes.positive_int, default=1024,
                   help="bound on requests in flight (default %(default)s)")
    g.add_argument("--request-timeout", type=argtypes.positive_float, default=120.0,
                   help="seconds per request (default %(default)s)")
    g.add_argument("--max-duration", type=argtypes.non_negative_float, default=0.0,
                   help="seconds per run; 0 = last arrival + request timeout (default %(default)s)")
    g.add_argument("--keep-logs", default="", metavar="DIR",
                   help="--live-policies: copy each cluster's logs (every process, decisions with reasons) "
                   "into DIR/POLICY/ before it is removed (default: not kept)")
    g.add_argument("--unloaded-from", default="", metavar="JSON",
                   help="--target: take the unloaded latency (hence the absolute SLOs) from this earlier "
                   "`hfx bench --json` output instead of probing the target, so two targets are held to the "
                   "same SLOs (default: probe the target)")
    g.add_argument("--per-request", default="", metavar="JSONL",
                   help="live: write one line per request and rate here (class, SLOs, verdict and reason, "
                   "TTFT, TPOT, met), so two targets' runs of the same requests compare request by request "
                   "(default: not written)")
    g.add_argument("--no-task-class", action="store_true", help="do not send the class name (targets that "
                   "do not know the workload's classes) (default: send it)")


def _model_facts(args) -> tuple[str, int, int]:
    from services.common.model import ensure_default_model

    model = args.model or str(ensure_default_model())
    config = json.loads((Path(model) / "config.json").read_text())
    max_len = args.max_model_len or int(config.get("max_position_embeddings", 2048))
    return model, int(config.get("vocab_size", 32000)), max_len


def _classes_yaml(workload: Workload, path: Path) -> None:
    """The router's task-class table for a live-policies cluster: the workload's classes with their
    priority and on_miss. The SLOs here are only defaults: the bench sends each request's own."""
    rows = [{"name": "default", "ttft_ms": 10_000.0, "tpot_ms": 1_000.0, "priority": 1}]
    rows += [{"name": c.name, "ttft_ms": 10_000.0, "tpot_ms": 1_000.0, "priority": c.priority,
              "on_miss": c.on_miss} for c in workload.classes]
    path.write_text(yaml.safe_dump({"classes": rows}))


def run_live_bench(args: argparse.Namespace) -> int:
    """Flags were checked while parsing (services.argtypes; --target and --live-policies exclude each other)."""
    if args.unloaded_from and not args.target:
        print("error: --unloaded-from applies to --target runs", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        workload = load_workload(args.workload)
        model, vocab, max_len = _model_facts(args)
        profile = None
        if args.profile_given:
            from services.sim.profiles import load_profile

            profile = load_profile(args.profile)
        unloaded = load_unloaded(args.unloaded_from) if args.unloaded_from else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    opts = LiveOptions(args.max_inflight, args.request_timeout, args.max_duration, not args.no_task_class)
    runs = LiveRuns(args, workload, model, vocab, max_len, profile, opts)
    runs.unloaded = unloaded

    def terminated(signum, frame):
        raise KeyboardInterrupt  # unwinds through run_all, whose finally stops the cluster it started

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        reports, samples = runs.run_all()
    except (RuntimeError, TimeoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return runs.write(reports, samples)


class LiveRuns:
    def __init__(self, args, workload: Workload, model: str, vocab: int, max_len: int, profile, opts: LiveOptions):
        self.args, self.workload, self.model, self.vocab, self.max_len = args, workload, model, vocab, max_len
        self.profile, self.opts = profile, opts
        self.unloaded: Unloaded | None = None
        self.engine_label = ""

    def _slos(self, target) -> dict:
        if self.profile is not None:
            return {c.name: c.slo(self.profile.model, self.profile.chunk_tokens) for c in self.workload.classes}
        if self.unloaded is None:
            self.unloaded = asyncio.run(_with_target(target, lambda t: probe(
                t, self.workload, self.vocab, self.max_len, self.args.probes, send_class=self.opts.send_class,
                warmups=max(2, self.args.workers or self.args.instances)),
                self.args))
            print(f"unloaded latency of {target}: TTFT " + ", ".join(
                f"{k} {v:.1f} ms" for k, v in self.unloaded.ttft_ms.items()) + f"; TPOT {self.unloaded.tpot_ms:.1f} ms",
                file=sys.stderr)
        return self.unloaded.slos(self.workload)

    def _requests(self, rate: float, slos: dict):
        # The profile (or cpu-tiny) only shapes generation; SLOs are replaced by the target's.
        from services.sim.profiles import get_profile

        shape = self.profile or get_profile("cpu-tiny")
        reqs = generate(self.workload, rate, self.args.requests, self.args.seed, shape.model, shape.chunk_tokens)
        return with_slos(as_live(reqs, self.max_len), slos)

    def _bench(self, target: str, policy: str, instances: int, reports: list, samples: dict) -> None:
        slos = self._slos(target)
        for rate in self.args.rate:
            requests = self._requests(rate, slos)
            bar = tqdm(total=len(requests), desc=f"{policy} @ {rate:g} rps (live)", file=sys.stderr,
                       disable=self.args.quiet, mininterval=0.5)
            started = time.perf_counter()
            result = asyncio.run(_with_target(target, lambda t: run_live(
                t, requests, self.vocab, self.args.seed, self.opts, lambda n: bar.update(n - bar.n), instances,
                prompt_salt=f"rate {rate:g}"),
                self.args))
            bar.close()
            rep = report(policy, rate, result, time.perf_counter() - started)
            reports.append(rep)
            samples[(policy, rate)] = tables.samples_of(result)
            if self.args.per_request:
                with open(self.args.per_request, "a") as out:
                    out.writelines(json.dumps(row) + "\n" for row in per_request_rows(policy, rate, result))
            _print_failures(result)

    def run_all(self) -> tuple[list[RunReport], dict]:
        reports: list[RunReport] = []
        samples: dict = {}
        if self.args.target:
            self.engine_label = f"live target {self.args.target}"
            self._bench(self.args.target, self.args.label or "target", 0, reports, samples)
            return reports, samples
        from services.local import cluster

        workers = self.args.workers or self.args.instances
        sim_profile = self.args.sim_profile or (self.args.profile if self.args.profile_given else "cpu-tiny")
        self.engine_label = (f"live mesh, {workers} {self.args.engine} workers"
                             + (f" (SIMULATED engine, profile {sim_profile})" if self.args.engine == "sim" else ""))
        for policy in self.args.live_policies:
            with tempfile.TemporaryDirectory(prefix="hfx-bench-") as home:
                classes = Path(home) / "classes.yaml"
                _classes_yaml(self.workload, classes)
                opts = self._up_options(Path(home), policy, workers, sim_profile, classes)
                print(f"[{policy}] starting {workers} {self.args.engine} worker(s)", file=sys.stderr)
                state = cluster.up(opts)
                try:
                    self._bench(state.router, policy, workers, reports, samples)
                finally:
                    cluster.down(Path(home), quiet=True)
                    if self.args.keep_logs:
                        dest = Path(self.args.keep_logs) / policy
                        try:
                            shutil.copytree(home, dest, dirs_exist_ok=True)
                            print(f"[{policy}] logs kept in {dest}", file=sys.stderr)
                        except OSError as err:  # the figures still count; say what was lost
                            print(f"[{policy}] warning: logs not kept in {dest}: {err}", file=sys.stderr)
        return reports, samples

    def _up_options(self, home: Path, policy: str, workers: int, sim_profile: str, classes: Path | None):
        from services.common import procs
        from services.local import cluster
        from services.sim.profiles import PROFILES

        prof = sim_profile if sim_profile in PROFILES else str(Path(sim_profile).resolve())
        return cluster.UpOptions(home=home, model=self.model, workers=workers, router_port=procs.free_port(),
                                 redis_url=None, policy=policy, engine=self.args.engine, tracing="off",
                                 timeout_s=300, http_port=0, classes=str(classes) if classes else "", metrics=False,
                                 sim_profile=prof, policy_config=_absolute(self.args.policy_config))

    def write(self, reports: list[RunReport], samples: dict) -> int:
        records = tables.records_of(reports)
        for r in records:
            r["engine"] = self.engine_label
        tables.print_table(records, self.engine_label)
        summary = tables.print_comparison(records)
        print("(SLOs from "
              + (f"profile {self.args.profile}" if self.profile else "the target's measured unloaded latency") + ")")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({
                "engine": self.engine_label, "target": self.args.target or "", "live_policies": self.args.live_policies,
                "workload": self.args.workload, "seed": self.args.seed, "max_model_len": self.max_len,
                "unloaded": None if self.unloaded is None else {"ttft_ms": self.unloaded.ttft_ms,
                                                                "tpot_ms": self.unloaded.tpot_ms},
                "profile": self.args.profile if self.profile else None, "requests": self.args.requests,
                "comparison": summary, "records": records}, indent=2))
            print(f"wrote {self.args.json}")
        if self.args.plot:
            from services.report import plots

            out = Path(self.args.plot)
            out.mkdir(parents=True, exist_ok=True)
            paths = [plots.attainment_vs_rate(records, out, self.engine_label),
                     *plots.latency_cdfs(samples, out, self.engine_label)]
            print("wrote " + ", ".join(str(p) for p in paths))
        return 0


def per_request_rows(policy: str, rate: float, result) -> list[dict]:
    """One dict per request of a live run, in the workload's order (the same index is the same
    request on every target run with the same workload, seed and rate)."""
    from services.report.metrics import met_slo, tpot_ms, ttft_ms

    rows = []
    for i, r in enumerate(result.records):
        t, p = ttft_ms(r), tpot_ms(r)
        rows.append({"policy": policy, "rate_rps": rate, "index": i, "task_class": r.spec.task_class,
                     "priority": r.spec.priority, "prompt_tokens": r.spec.prompt_tokens,
                     "output_tokens": r.output_tokens, "arrival_s": r.spec.arrival_s,
                     "ttft_slo_ms": r.spec.slo.ttft_ms, "tpot_slo_ms": r.spec.slo.tpot_ms, "verdict": r.verdict,
                     "reason": r.reason, "ttft_ms": t, "tpot_ms": p, "met": met_slo(r)})
    return rows


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""


def load_unloaded(path: str) -> Unloaded:
    """The `unloaded` probe of an earlier `hfx bench --json` run."""
    try:
        doc = json.loads(Path(path).read_text())["unloaded"]
        return Unloaded({str(k): float(v) for k, v in doc["ttft_ms"].items()}, float(doc["tpot_ms"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"--unloaded-from {path}: no unloaded-latency probe in it ({type(err).__name__}: {err})") from None


async def _with_target(address, fn, args=None):
    a = args
    target = make_target(address, getattr(a, "target_model", "") if a else "", getattr(a, "api_key", "") if a else "")
    try:
        if hasattr(target, "resolve_model"):
            await target.resolve_model()
        return await fn(target)
    finally:
        await target.close()


def _print_failures(result) -> None:
    reasons: dict[str, int] = {}
    for r in result.records:
        if r.verdict in ("failed", "reject"):
            key = f"{r.verdict}: {r.reason[:120]}"
            reasons[key] = reasons.get(key, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {n:5d} x {reason}", file=sys.stderr)
