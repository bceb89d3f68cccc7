"""Autoscalers compared LIVE: `hfx autoscale-bench`'s comparison on the real mesh, with SIMULATED
workers (engine sim: each worker emulates a latency profile in real time; no model runs).

For each autoscaler (static at the peak, the queue-length threshold one, the throughput planner,
hfx) this starts a local cluster (Redis, scheduler with the hfx scheduling policy, router, scaler,
sim workers; `hfx up --autoscale --autoscaler NAME`), replays one bursty trace through the
router's gRPC API at its timestamps with each task class's SLOs (services/bench/live.py, the
client of `hfx bench`), and stops the cluster. The trace is `hfx autoscale-bench`'s slow swell
with sharp spikes (services/sim/traces.py), compressed in time (--duration-s, --spike-s) and
scaled in rate (--peak-rps) to fit 16 workers on a small machine; the autoscalers' clocks
(tick, window, periods, cool-downs) are compressed with it (--time-scale divides the
simulator bench's settings).

Figures per autoscaler: instance-seconds over the replay (from the scaler's own meter: every
worker it launched, starting, ready or draining, integrated over its autoscale ticks, read from
its status in Redis), SLO attainment (rejected and failed requests count as misses), requests
done / rejected / failed, starts / drains / removals (the decisions it claimed in Redis) and the
peak instance count.

    .venv/bin/python -m benchmarks.autoscale_live [--autoscalers static queue planner hfx]
        [--duration-s 300] [--max-workers 16] [--json out.json] [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from services import argtypes
from services.bench.cli import _classes_yaml, _with_target
from services.bench.live import LiveOptions, run_live
from services.common import procs, store
from services.common.keys import Keys
from services.common.model import ensure_default_model
from services.local import cluster
from services.report.metrics import attainment, attainment_over_time
from services.scaler.autoscale import AutoscaleConfig
from services.scaler.autoscale.choice import AUTOSCALERS, BaselineSettings
from services.sim.autoscale_bench import (
    DEFAULT_WORKLOAD, PEAK_BIN_S, add_trace_flags, instance_capacity, make_requests, print_autoscalers, trace_peak_rps)
from services.sim.profiles import load_profile
from services.sim.traces import SwellSpikes
from services.sim.workload import as_live, at_times, load_workload

ENGINE = "engine: sim (SIMULATED workers behind the real mesh)"
PROFILE = Path(__file__).resolve().parent / "sim-cpu-tiny-x4.json"
ORDER = ("static", "queue", "planner", "hfx")
SAMPLE_S = 0.25           # how often the scaler's status is read (it writes one each tick)
BUCKET_S = 10.0           # attainment over time: of the requests arriving in each bucket


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.autoscale_live", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--autoscalers", nargs="+", default=list(ORDER), choices=AUTOSCALERS, help="which to run")
    add_trace_flags(p)
    p.add_argument("--duration-s", type=argtypes.positive_float, default=300.0,
                   help="swell trace: length; Azure trace: replay at most this long")
    p.add_argument("--spike-s", type=argtypes.positive_float, default=15.0, help="swell trace: length of each spike")
    p.add_argument("--peak-rps", type=argtypes.positive_float, default=None,
                   help="swell trace: the peak rate (default: 75%% of --max-workers' SLO capacity); Azure trace: "
                   "static's sizing rate (default: the replay's most arrivals in 30 s, per second)")
    p.add_argument("--max-workers", type=argtypes.positive_int, default=16, help="autoscalers' maximum")
    p.add_argument("--min-workers", type=argtypes.positive_int, default=1, help="autoscalers' minimum and start")
    p.add_argument("--static-workers", type=argtypes.positive_int, default=None,
                   help="static: workers (default: peak rate / per-worker SLO capacity, at most --max-workers)")
    p.add_argument("--profile", default=str(PROFILE), type=argtypes.sim_profile,
                   help="the sim workers' latency profile (and the SLOs' and capacity's)")
    p.add_argument("--workload", default=str(DEFAULT_WORKLOAD), type=argtypes.workload_file,
                   help="task classes (lengths, SLOs); its arrival process is ignored")
    p.add_argument("--time-scale", type=argtypes.positive_float, default=6.0,
                   help="divide the simulator bench's clocks by this: tick 5 s, window 30 s, warm-up 30 s, queue "
                   "period 15 s / stabilisation 300 s, planner interval 60 s, hfx scale-down horizon 60 s and "
                   "cool-down --hfx-cooldown-s "
                   "(the default compresses its 1800 s trace into the default --duration-s)")
    p.add_argument("--cold-start-s", type=argtypes.non_negative_float, default=5.0,
                   help="a worker's launch-to-ready time until the scaler has measured one")
    p.add_argument("--queue-target", type=argtypes.positive_float, default=1.0,
                   help="queue: target queued requests per worker")
    p.add_argument("--planner-utilization", type=argtypes.positive_float, default=1.0,
                   help="planner: plan for this share of the profiled per-worker throughput")
    p.add_argument("--hfx-target-utilization", type=argtypes.positive_float, default=1.0,
                   help="hfx: scale up above this share of SLO capacity (the simulator's headline setting)")
    p.add_argument("--hfx-scale-down-utilization", type=argtypes.positive_float, default=0.9,
                   help="hfx: survivors must stay at or below this share")
    p.add_argument("--hfx-cooldown-s", type=argtypes.non_negative_float, default=30.0,
                   help="hfx: seconds after a scale action before a removal, before --time-scale")
    d = AutoscaleConfig()
    p.add_argument("--hfx-backlog-drain-s", type=argtypes.non_negative_float, default=d.backlog_drain_s,
                   help="hfx: buy capacity that clears the queue within this long, before --time-scale")
    p.add_argument("--hfx-rate-noise-z", type=argtypes.non_negative_float, default=d.rate_noise_z,
                   help="hfx: a rate change beyond this many deviations of counting noise counts at once (0: none)")
    p.add_argument("--hfx-drain-noise-z", type=argtypes.non_negative_float, default=d.drain_noise_z,
                   help="hfx: survivors of a removal stay under the target utilization at the rate this many "
                   "deviations of counting noise above the measured one (0: off)")
    p.add_argument("--hfx-slo-feedback-s", type=argtypes.non_negative_float, default=d.slo_feedback_s,
                   help="hfx: time constant of the SLO feedback on capacity, before --time-scale (0: off)")
    p.add_argument("--hfx-attainment-margin", type=argtypes.non_negative_float, default=d.attainment_margin,
                   help="hfx: the SLO feedback aims this far above the target attainment")
    p.add_argument("--hfx-forecast-max-growth-per-min", type=argtypes.non_negative_float, default=d.forecast_max_growth_per_min,
                   help="hfx: the forecast exceeds the measured rate by at most this share per minute of lead time")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="trace, classes and prompts")
    p.add_argument("--request-timeout", type=argtypes.positive_float, default=120.0, help="seconds per request")
    p.add_argument("--progress-s", type=argtypes.positive_float, default=15.0, help="seconds between progress lines")
    p.add_argument("--json", type=argtypes.output_file, help="write the results here (default: not written)")
    p.add_argument("--plot", help="write autoscale_timeline.png into this directory (default: no plot)")
    p.add_argument("--combine", nargs="+", metavar="JSON", default=[],
                   help="run nothing: print one table (and --plot, --json) from earlier --json outputs of the same "
                   "trace, e.g. one autoscaler per command (default: run)")
    p.add_argument("--keep-logs", default="", metavar="DIR",
                   help="copy each cluster's logs (the scaler's decisions with reasons) into DIR/NAME/ (default: no)")
    return p


class Trace:
    """The replayed requests: the swell (its spikes --spike-s long), or an Azure trace through
    `hfx autoscale-bench`'s make_requests, static sized for its 30 s peak as that bench does."""

    def __init__(self, args) -> None:
        self.workload = load_workload(args.workload)
        self.profile = load_profile(args.profile)
        self.capacity = instance_capacity(self.profile, self.workload)
        model = Path(ensure_default_model())
        config = json.loads((model / "config.json").read_text())
        self.model, self.vocab = str(model), int(config.get("vocab_size", 32000))
        self.max_len = int(config.get("max_position_embeddings", 2048))
        if args.trace == "swell":
            self.peak = args.peak_rps or 0.75 * args.max_workers * self.capacity
            swell = SwellSpikes(args.duration_s, self.peak, spike_s=args.spike_s)
            shapes = [(t, -1, -1) for t in swell.arrivals(args.seed)]
            reqs = at_times(self.workload, shapes, random.Random(args.seed), self.profile.model,
                            self.profile.chunk_tokens)
        else:
            reqs, _ = make_requests(args, self.workload, self.profile, 0.0)
            self.peak = args.peak_rps or trace_peak_rps(reqs)
        self.requests = as_live(reqs, self.max_len)
        self.static_n = args.static_workers or min(args.max_workers, math.ceil(self.peak / self.capacity))

    def arrival_rps(self) -> list[float]:
        """Arrivals per second in each PEAK_BIN_S bin of the replay (the plot's offered rate)."""
        counts = [0] * (int(max((r.spec.arrival_s for r in self.requests), default=0.0) // PEAK_BIN_S) + 1)
        for r in self.requests:
            counts[int(r.spec.arrival_s // PEAK_BIN_S)] += 1
        return [n / PEAK_BIN_S for n in counts]

    def describe(self, args) -> str:
        span = f"{len(self.requests)} requests over {self.requests[-1].spec.arrival_s:.0f}s" if self.requests else "empty"
        if args.trace == "swell":
            return f"swell trace ({span}, spikes {args.spike_s:g}s, peak {self.peak:.2f} req/s, seed {args.seed})"
        return (f"trace {args.trace} (every {args.trace_every}th row at {args.trace_speedup:g}x, lengths "
                f"{args.trace_lengths}: {span}, 30 s peak {self.peak:.2f} req/s, seed {args.seed})")

    def doc(self, args) -> dict:
        """The trace's part of the --json document (what --combine compares)."""
        if args.trace == "swell":
            return {"duration_s": args.duration_s, "spike_s": args.spike_s}
        return {"trace": args.trace, "trace_speedup": args.trace_speedup, "trace_lengths": args.trace_lengths,
                "trace_every": args.trace_every, "duration_s": args.duration_s, "arrival_rps": self.arrival_rps()}


def scaler_flags(name: str, args, trace: Trace) -> tuple[str, ...]:
    """`hfx up`'s autoscaling flags for autoscaler `name`, the clocks divided by the time scale."""
    k = args.time_scale
    static = name == "static"
    cap = trace.capacity * (args.planner_utilization if name == "planner" else 1.0)
    flags = ["--autoscale", "--autoscaler", name, "--min", str(trace.static_n if static else args.min_workers),
             "--max", str(trace.static_n if static else args.max_workers), "--capacity-rps", f"{cap:.6g}",
             "--cold-start-s", str(args.cold_start_s), "--autoscale-tick-s", f"{5.0 / k:.3g}",
             "--autoscale-window-s", f"{30.0 / k:.3g}", "--warmup-s", f"{30.0 / k:.3g}",
             "--target-utilization", str(args.hfx_target_utilization),
             "--scale-down-utilization", str(args.hfx_scale_down_utilization),
             "--scale-down-cooldown-s", f"{args.hfx_cooldown_s / k:.3g}",
             "--scale-down-horizon-s", f"{AutoscaleConfig().scale_down_horizon_s / k:.3g}",
             "--backlog-drain-s", f"{args.hfx_backlog_drain_s / k:.3g}", "--rate-noise-z", str(args.hfx_rate_noise_z),
             "--drain-noise-z", str(args.hfx_drain_noise_z),
             "--slo-feedback-s", f"{args.hfx_slo_feedback_s / k:.3g}",
             "--attainment-margin", str(args.hfx_attainment_margin),
             "--forecast-max-growth-per-min", str(args.hfx_forecast_max_growth_per_min)]
    base = BaselineSettings()
    if name == "queue":
        flags += ["--queue-target", str(args.queue_target), "--queue-period-s", f"{base.queue_period_s / k:.3g}",
                  "--queue-stabilization-s", f"{base.queue_stabilization_s / k:.3g}"]
    elif name == "planner":
        flags += ["--planner-interval-s", f"{base.planner_interval_s / k:.3g}"]
    return tuple(flags)


class Watch:
    """The scaler's autoscale status (written each tick) and decisions, read from Redis."""

    def __init__(self, state: cluster.ClusterFile) -> None:
        self.redis = store.connect_sync(state.redis_url)
        self.keys = Keys(state.redis_prefix)
        self.samples: list[tuple[float, dict]] = []     # (wall time, status)
        self.max_load_1m = 0.0                            # the machine's, while the replay runs

    def status(self) -> dict | None:
        raw = self.redis.get(self.keys.autoscale())
        return json.loads(raw) if raw else None

    def meter_at(self, t_s: float) -> float:
        """The scaler's instance-seconds at wall time t_s: the total of its last tick at or before
        t_s plus the fleet that tick paid for since (each interval counts at the fleet of the tick
        that began it, as the scaler's meter does)."""
        before = [s for _, s in self.samples if s["at"] <= t_s]
        if not before:
            raise RuntimeError("no autoscale status from before the replay")
        s = max(before, key=lambda s: s["at"])
        return s["instance_seconds"] + (s.get("paid_instances") or 0.0) * (t_s - s["at"])

    def decisions(self, since_s: float, until_s: float) -> list[dict]:
        out = []
        for key in self.redis.scan_iter(f"{self.keys.prefix}:scale:*"):
            raw = self.redis.get(key)
            if raw:
                d = json.loads(raw)
                if since_s <= d.get("at", 0.0) <= until_s:
                    out.append(d)
        return out

    async def follow(self, t0: float, every_s: float, progress_s: float, name: str, sent) -> None:
        last_print = 0.0
        while True:
            s = await asyncio.to_thread(self.status)
            now = time.time()
            self.max_load_1m = max(self.max_load_1m, os.getloadavg()[0])
            if s is not None:
                self.samples.append((now, s))
                if now - last_print >= progress_s:
                    last_print = now
                    a = s.get("actual", {})
                    print(f"  [{name}] {now - t0:5.0f}s: {sent()} done; workers {a.get('ready', 0)} ready + "
                          f"{a.get('starting', 0)} starting + {a.get('draining', 0)} draining, desired "
                          f"{s.get('desired')}, {s.get('arrival_rps', 0):.1f} req/s: {s.get('reason', '')[:110]}",
                          file=sys.stderr, flush=True)
            await asyncio.sleep(every_s)


def run_one(name: str, args, trace: Trace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"hfx-autoscale-live-{name}-") as tmp:
        home = Path(tmp)
        classes = home / "classes.yaml"
        _classes_yaml(trace.workload, classes)
        workers = trace.static_n if name == "static" else args.min_workers
        print(f"[{name}] starting {workers} sim worker(s)", file=sys.stderr, flush=True)
        started = time.monotonic()
        state = cluster.up(cluster.UpOptions(
            home=home, model=trace.model, workers=workers, router_port=procs.free_port(), redis_url=None,
            policy="hfx", engine="sim", tracing="off", timeout_s=300, http_port=procs.free_port(),
            classes=str(classes), sim_profile=str(Path(args.profile).resolve()) if Path(args.profile).is_file()
            else args.profile, scaler_args=scaler_flags(name, args, trace)))
        try:
            return _measure(name, args, trace, state, time.monotonic() - started)
        finally:
            cluster.down(home, quiet=True)
            if args.keep_logs:
                import shutil

                shutil.copytree(state.log_dir, Path(args.keep_logs) / name, dirs_exist_ok=True)


def _measure(name: str, args, trace: Trace, state: cluster.ClusterFile, up_s: float) -> dict:
    watch = Watch(state)
    deadline = time.time() + 30
    while (first := watch.status()) is None:      # the first autoscale tick
        if time.time() > deadline:
            raise RuntimeError(f"[{name}] the scaler wrote no autoscale status in 30 s; see {state.log_dir}")
        time.sleep(0.2)
    watch.samples.append((time.time(), first))
    done = [0]
    opts = LiveOptions(max_inflight=1024, request_timeout_s=args.request_timeout)

    load_start = load_now()

    async def replay():
        t0 = time.time()
        follower = asyncio.create_task(watch.follow(t0, SAMPLE_S, args.progress_s, name, lambda: done[0]))
        try:
            result = await _with_target(state.router, lambda t: run_live(
                t, trace.requests, trace.vocab, args.seed, opts, lambda n: done.__setitem__(0, n)))
        finally:
            await asyncio.sleep(SAMPLE_S + 5.0 / args.time_scale)   # the tick after the last request is seen
            follower.cancel()
        return t0, result

    t0, result = asyncio.run(replay())
    load_end = load_now()
    # run_live's clock starts 0.1 s after t0; the run ends when its last request finishes.
    start_s, end_s = t0 + 0.1, t0 + 0.1 + result.makespan_s
    instance_s = watch.meter_at(end_s) - watch.meter_at(start_s)
    records = result.records
    verdicts = {v: sum(r.verdict == v for r in records) for v in ("admit", "reject", "failed")}
    decisions = watch.decisions(start_s, end_s)
    timeline = []
    for wall, s in watch.samples:
        if start_s <= wall <= end_s:
            a = s.get("actual", {})
            timeline.append((wall - start_s, a.get("starting", 0) + a.get("ready", 0) + a.get("draining", 0),
                             a.get("ready", 0)))
    out = {
        "autoscaler": name, "instance_seconds": instance_s, "slo_attainment": attainment(records),
        "requests": len(records), "done": verdicts["admit"], "rejected": verdicts["reject"],
        "failed": verdicts["failed"], "short": sum(r.verdict == "admit" and r.reason.startswith("asked for")
                                                   for r in records),
        "peak_instances": max((n for _, n, _ in timeline), default=0),
        "mean_instances": instance_s / result.makespan_s if result.makespan_s else 0.0,
        "makespan_s": result.makespan_s, "cluster_up_s": up_s,
        "load": {"start": load_start, "end": load_end, "max_1m": round(watch.max_load_1m, 2)},
        "actions": {k: sum(d["action"] == k.lower() for d in decisions) for k in ("Start", "Drain", "Undrain", "Remove")},
        "timeline": timeline,
        "attainment_over_time": attainment_over_time(records, BUCKET_S),
        "scaler_flags": list(scaler_flags(name, args, trace)),
        "last_reasons": [f"{d['at'] - start_s:.0f}s {d['action']} {d.get('instance_id', '')}: {d['reason']}"
                         for d in sorted(decisions, key=lambda d: d["at"])[-3:]],
    }
    print(f"[{name}] {out['instance_seconds']:.0f} instance-s, attainment {out['slo_attainment']:.1%}, "
          f"{verdicts['admit']} done / {verdicts['reject']} rejected / {verdicts['failed']} failed of "
          f"{len(records)}, peak {out['peak_instances']}; load average {_load_text(load_start)} at the start, "
          f"{_load_text(load_end)} at the end, 1-min max {watch.max_load_1m:.2f}", file=sys.stderr, flush=True)
    return out


def load_now() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _load_text(load: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def print_table(results: list[dict]) -> None:
    counts = [(head, width, lambda r, k=key: f"{r[k]}") for head, width, key in
              (("done", 6, "done"), ("rej", 5, "rejected"), ("fail", 5, "failed"))]
    actions = [(head, width, lambda r, k=key: f"{r['actions'][k]}") for head, width, key in
               (("starts", 7, "Start"), ("drains", 7, "Drain"), ("removes", 8, "Remove"))]
    print_autoscalers(results, counts + actions,
                      f"({ENGINE}; instance-seconds: the scaler's meter of the workers it launched (starting, ready or "
                      "draining) from the first request's arrival to the last one's end; attainment counts rejected "
                      "and failed requests as misses)")


def combine(paths: list[str]) -> tuple[dict, list[dict]]:
    """One document from several runs' --json outputs; they must share the trace."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    same = ("profile", "trace", "trace_speedup", "trace_lengths", "trace_every", "duration_s", "spike_s", "peak_rps",
            "seed", "time_scale", "static_workers")
    for p, d in zip(paths[1:], docs[1:]):
        differ = [k for k in same if d.get(k) != docs[0].get(k)]
        if differ:
            raise ValueError(f"{p} is another trace than {paths[0]} ({', '.join(differ)} differ)")
    by_name = {r["autoscaler"]: r for d in docs for r in d["results"]}
    return docs[0], [by_name[n] for n in ORDER if n in by_name]


def report(doc: dict, results: list[dict], args) -> None:
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({**doc, "results": results}, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from services.report.plots import autoscale_timeline

        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {autoscale_timeline(results, offered_rate(doc), out, ENGINE)}")


def offered_rate(doc: dict):
    """The replay's offered rate over time: the swell's curve, or a replayed trace's arrivals per
    PEAK_BIN_S bin (None for a trace document without them)."""
    if "trace" not in doc:
        return SwellSpikes(doc["duration_s"], doc["peak_rps"], spike_s=doc["spike_s"]).rate
    bins = doc.get("arrival_rps")
    if not bins:
        return None
    return lambda t: bins[min(len(bins) - 1, max(0, int(t // PEAK_BIN_S)))]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.combine:
        try:
            doc, results = combine(args.combine)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --combine: {exc}", file=sys.stderr)
            return 2
        report(doc, results, args)
        return 0
    if args.min_workers > args.max_workers:
        print(f"error: --min-workers {args.min_workers} > --max-workers {args.max_workers}", file=sys.stderr)
        return 2
    try:
        trace = Trace(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not trace.requests:
        print("error: the trace has no requests", file=sys.stderr)
        return 2
    print(f"{ENGINE}; profile {trace.profile.name}; scheduling policy hfx; {trace.describe(args)}; "
          f"per-worker SLO capacity {trace.capacity:.3f} req/s; workers {args.min_workers}-{args.max_workers}, "
          f"static {trace.static_n}; clocks / {args.time_scale:g}", flush=True)
    results = []
    for name in [n for n in ORDER if n in args.autoscalers]:
        try:
            results.append(run_one(name, args, trace))
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: [{name}] {exc}", file=sys.stderr)
            return 1
    report({"engine": ENGINE, "profile": trace.profile.name, **trace.doc(args),
            "peak_rps": trace.peak, "capacity_rps": trace.capacity, "seed": args.seed, "time_scale": args.time_scale,
            "static_workers": trace.static_n, "requests": len(trace.requests)}, results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
