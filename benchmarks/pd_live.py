"""Colocated vs P/D on live vLLM CPU workers, paired (issue 10): the same requests (one workload,
one seed, the same arrival times and prompts) with the same absolute SLOs, sent open-loop through
the whole mesh (router, scheduler, workers) to clusters of equal instance count, started one
after the other by this command: `--colocated N` colocated, then `--prefill P --decode D` once per
policy in --pd-policies (KV moved by HFX's connector; the baselines place each stage by their own
rule). The SLOs are scales of the first cluster's unloaded latency, probed first.
Prints SLO attainment and TTFT / TPOT p50 / p99, overall and per class, and D's KV pulls.

On a 2-core machine the engines, the control plane and the client share the cores: both setups
run under the same contention, which is part of what is measured.

    .venv/bin/python -m benchmarks.pd_live [--workload services/sim/workloads/pd.yaml] [--rate 2]
        [--requests 80] [--colocated 2] [--prefill 1] [--decode 1] [--policy hfx]
        [--pd-policies hfx least-load fcfs] [--policy-config FILE] [--json out.json] [--keep-logs DIR]
        [--tracing local]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from services import argtypes
from services.bench.cli import _classes_yaml, _with_target
from services.bench.live import LiveOptions, probe, run_live, with_slos
from services.common import procs
from services.common.model import ensure_default_model
from services.local import cluster
from services.report.metrics import met_slo, report, tpot_ms, ttft_ms
from services.scheduler.policy import policy_names
from services.sim.profiles import get_profile
from services.sim.workload import as_live, generate, load_workload
from services.worker.kv import tcp

PD_WORKLOAD = Path(__file__).resolve().parent.parent / "services" / "sim" / "workloads" / "pd.yaml"


def up(home: Path, args, workers: int, prefill: int, decode: int, classes: Path, policy: str) -> cluster.ClusterFile:
    return cluster.up(cluster.UpOptions(
        home=home, model=args.model, workers=workers, router_port=procs.free_port(), redis_url=None,
        policy=policy, engine=args.engine, tracing=args.tracing, timeout_s=600, classes=str(classes), http_port=0,
        metrics=False, prefill=prefill, decode=decode,
        policy_config=str(Path(args.policy_config).resolve()) if args.policy_config else ""))


def d_pulls(state: cluster.ClusterFile) -> dict:
    """D workers' KV pull outcomes, from their KV servers (addresses in their logs)."""
    out: dict[str, int] = {}
    for log in Path(state.log_dir).glob("hfx-d*.log"):
        found = re.findall(r"KV transfer server on (\S+),", log.read_text())
        if found:
            for k, v in tcp.request(found[-1], {"op": "stats"})["pulls"]["outcomes"].items():
                out[k] = out.get(k, 0) + v
    return out


def run_setup(name: str, args, workers: int, prefill: int, decode: int, workload, slos_holder: dict,
              policy: str) -> dict:
    config = json.loads((Path(args.model) / "config.json").read_text())
    vocab, max_len = int(config.get("vocab_size", 32000)), int(config.get("max_position_embeddings", 2048))
    with tempfile.TemporaryDirectory(prefix="hfx-pdlive-") as home:
        classes = Path(home) / "classes.yaml"
        _classes_yaml(workload, classes)
        print(f"[{name}] starting {workers} colocated, {prefill} prefill, {decode} decode {args.engine} workers, "
              f"policy {policy}", file=sys.stderr)
        state = up(Path(home), args, workers, prefill, decode, classes, policy)
        try:
            if "slos" not in slos_holder:
                unloaded = asyncio.run(_with_target(state.router, lambda t: probe(
                    t, workload, vocab, max_len, 3, warmups=2)))
                slos_holder["slos"] = unloaded.slos(workload)
                slos_holder["unloaded"] = {"ttft_ms": unloaded.ttft_ms, "tpot_ms": unloaded.tpot_ms}
                print(f"[{name}] unloaded: {slos_holder['unloaded']}", file=sys.stderr)
            shape = get_profile("cpu-tiny")
            reqs = with_slos(as_live(generate(workload, args.rate, args.requests, args.seed, shape.model,
                                              shape.chunk_tokens), max_len), slos_holder["slos"])
            started = time.perf_counter()
            result = asyncio.run(_with_target(state.router, lambda t: run_live(
                t, reqs, vocab, args.seed, LiveOptions(request_timeout_s=120.0), None,
                workers + prefill + decode)))
            rep = report(name, args.rate, result, time.perf_counter() - started)
            pulls = d_pulls(state) if decode else {}
            if args.keep_logs:   # the scheduler's log holds each decision's reason
                kept = Path(args.keep_logs) / name.replace("/", "").replace(" ", "-")
                shutil.copytree(state.log_dir, kept, dirs_exist_ok=True)
                if cluster.traces_dir(Path(home)).is_dir():   # --tracing local: `hfx explain` reads these
                    shutil.copytree(cluster.traces_dir(Path(home)), kept / "traces", dirs_exist_ok=True)
        finally:
            cluster.down(Path(home), quiet=True)
    return {"setup": name, "policy": policy, "attainment": rep.slo_attainment, "completed": rep.completed, "rejected": rep.rejected,
            "failed": rep.failed, "ttft_ms": rep.ttft_ms, "tpot_ms": rep.tpot_ms, "per_class": rep.per_class,
            "kv_pulls": pulls, "requests": [per_request(r) for r in result.records]}


def per_request(r) -> dict:
    """One request's outcome: what the same request did under each setup can then be compared."""
    f = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {"i": r.spec.request_id, "class": r.spec.task_class, "prompt": r.spec.prompt_tokens,
            "output": r.output_tokens, "arrival_s": round(r.spec.arrival_s, 3), "verdict": r.verdict,
            "reason": r.reason, "ttft_ms": f(ttft_ms(r)), "tpot_ms": f(tpot_ms(r)), "met": met_slo(r)}


def show(rows: list[dict]) -> None:
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"{'setup':<16} {'class':<8} {'n':>4} {'attain':>7} {'rej':>4} {'TTFT p50':>9} {'p99':>7} "
          f"{'TPOT p50':>9} {'p99':>6}")
    for r in rows:
        lines = [("all", r["completed"] + r["rejected"] + r["failed"], r["attainment"], r["rejected"],
                  r["ttft_ms"], r["tpot_ms"])]
        lines += [(c, v["requests"], v["slo_attainment"], v["rejected"], v["ttft_ms"], v["tpot_ms"])
                  for c, v in sorted(r["per_class"].items())]
        for cls, n, att, rej, ttft, tpot in lines:
            print(f"{r['setup']:<16} {cls:<8} {n:>4} {100 * att:>6.1f}% {rej:>4} {f(ttft.get('p50')):>9} "
                  f"{f(ttft.get('p99')):>7} {f(tpot.get('p50')):>9} {f(tpot.get('p99')):>6}")
        if r["kv_pulls"]:
            print(f"{r['setup']:<16} KV pulls on D: {r['kv_pulls']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workload", type=argtypes.workload_file, default=str(PD_WORKLOAD),
                        help="task classes and arrivals (lengths, SLO scales); its rate is --rate")
    parser.add_argument("--rate", type=argtypes.positive_float, default=2.0, help="arrivals per second (Poisson)")
    parser.add_argument("--requests", type=argtypes.positive_int, default=80, help="requests per setup")
    parser.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="arrivals and prompts")
    parser.add_argument("--colocated", type=argtypes.non_negative_int, default=2,
                        help="workers of the colocated setup (0: skip it; the SLOs are then probed on the first P/D one)")
    parser.add_argument("--prefill", type=argtypes.positive_int, default=1, help="prefill workers of each P/D setup")
    parser.add_argument("--decode", type=argtypes.positive_int, default=1, help="decode workers of each P/D setup")
    parser.add_argument("--policy", choices=policy_names(), default="hfx", help="the colocated setup's scheduling policy")
    parser.add_argument("--pd-policies", choices=policy_names(), nargs="+", default=["hfx"],
                        help="one P/D setup per policy, in this order, all with the same requests and SLOs "
                             "(e.g. hfx least-load fcfs: the P/D baselines place each stage by that policy)")
    parser.add_argument("--policy-config", type=argtypes.policy_config_file, default="",
                        help="every scheduler's --policy-config (e.g. benchmarks/pd-live-policy.yaml: the chunk_tokens "
                             "the vLLM CPU workers step, 2048 here; without it HFX assumes 512 and says so in its log)")
    parser.add_argument("--model", default="", help="model directory (default: the built-in tiny model)")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "sim"],
                        help="sim: SIMULATED engines (a smoke run of this command, not a measurement)")
    parser.add_argument("--json", default="", help="write the rows (and the probed unloaded latency) here")
    parser.add_argument("--tracing", choices=["off", "local"], default="off",
                        help="local: spans in each cluster's span store (kept with --keep-logs), at some cost")
    parser.add_argument("--keep-logs", default="", help="copy each cluster's logs (the scheduler's has every "
                        "decision's reason) into a folder per setup under this one; empty: not kept")
    args = parser.parse_args()
    args.model = args.model or str(ensure_default_model())
    workload = load_workload(args.workload)
    slos: dict = {}
    rows = [run_setup("colocated", args, args.colocated, 0, 0, workload, slos, args.policy)] if args.colocated else []
    rows += [run_setup(f"P/D {policy}", args, 0, args.prefill, args.decode, workload, slos, policy)
             for policy in args.pd_policies]
    if args.engine == "sim":
        print("engine: sim (SIMULATED, not inference)")
    show(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "unloaded": slos.get("unloaded"), "rows": rows},
                                              indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
