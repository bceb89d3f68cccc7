"""HFX against the simplest peer on the same engines, in one run.

The peer is what a user would put in front of vLLM instead: vLLM's own router (`vllm-router`,
round robin) over N `vllm.entrypoints.openai.api_server` engines, engine i pinned to core i with
taskset. HFX is `hfx up --workers N` (its workers pin their engines the same way). Each target is
started, measured and stopped in turn, so they never share the machine:

  1. vLLM's serving benchmark (random dataset, ignore_eos, goodput SLOs), per --rate;
     HFX also gets the same SLOs as request headers unless --no-slo-headers;
  2. per-process CPU seconds over each benchmark run (router, engines' frontends, engine cores,
     scheduler, scaler, Redis), from /proc;
  3. with --multi-slo RATES: HFX's own multi-class workload (`hfx bench --target`) against both,
     with the same absolute SLOs (scales of the peer's unloaded latency, probed once).

  python -m benchmarks.peer.compare --rate 20 --requests 200 --json benchmarks/peer/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from benchmarks.peer import cputime, flame
from services import argtypes
from services.common import procs
from services.worker.engine.device import device_environment

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=argtypes.positive_int, default=2, help="vLLM engines per target (default %(default)s)")
    p.add_argument("--rate", type=argtypes.positive_float, nargs="*", default=[20.0],
                   help="request rates (req/s) for vLLM's serving benchmark; none given: only the "
                   "multi-class workload (default %(default)s)")
    p.add_argument("--requests", type=argtypes.positive_int, default=200, help="requests per rate (default %(default)s)")
    p.add_argument("--input-len", type=argtypes.positive_int, default=256, help="random prompt tokens (default %(default)s)")
    p.add_argument("--output-len", type=argtypes.positive_int, default=64, help="output tokens (default %(default)s)")
    p.add_argument("--ttft-ms", type=argtypes.positive_float, default=200.0, help="goodput TTFT SLO (default %(default)s)")
    p.add_argument("--tpot-ms", type=argtypes.positive_float, default=20.0, help="goodput TPOT SLO (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="benchmark seed (default %(default)s)")
    p.add_argument("--targets", nargs="+", choices=["peer", "hfx"], default=["peer", "hfx"],
                   help="what to measure, in this order (default: %(default)s)")
    p.add_argument("--no-slo-headers", action="store_true",
                   help="do not send x-slo-ttft-ms / x-slo-tpot-ms to HFX (default: send the goodput SLOs)")
    p.add_argument("--multi-slo", type=argtypes.positive_float, nargs="*", default=[], metavar="RATE",
                   help="also run HFX's multi-class workload at these rates against both (default: none)")
    p.add_argument("--multi-slo-requests", type=argtypes.positive_int, default=300,
                   help="requests per rate of the multi-class workload (default %(default)s)")
    p.add_argument("--unloaded-from", default="", metavar="JSON",
                   help="the multi-class workload's shared unloaded-latency probe (hence its absolute SLOs) for "
                   "every target, from an earlier run's multi-slo-peer.json (`--keep-logs`) or `hfx bench --json`, "
                   "so the targets can run in either order (default: probe the peer, which must then run first)")
    p.add_argument("--hfx-arg", action="append", default=[], metavar="ARG",
                   help="extra `hfx up` argument, repeatable (e.g. --hfx-arg=--policy=fcfs)")
    p.add_argument("--flame", default="", metavar="DIR",
                   help="record py-spy profiles (collapsed stacks) of each target's processes into DIR and "
                   "print where the router's time goes (default: off)")
    p.add_argument("--json", default="", help="write every figure to this JSON file (default: none)")
    p.add_argument("--keep-logs", default="", metavar="DIR", help="copy each target's logs here (default: none)")
    return p.parse_args(argv)


# -- targets ---------------------------------------------------------------------------------------

def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what or url} not ready after {timeout_s:.0f}s")


def _vllm_router() -> str:
    """vllm-router next to this interpreter (the `bench` extra), else the first on PATH."""
    beside = Path(sys.executable).parent / "vllm-router"
    found = str(beside) if beside.exists() else shutil.which("vllm-router")
    if not found:
        raise FileNotFoundError("vllm-router: not beside the interpreter nor on PATH (pip install 'hfx[bench]')")
    return found


@contextmanager
def peer(model: str, engines: int, logs: Path):
    """vllm-router (round robin) over `engines` pinned vLLM OpenAI servers; yields (url, roots)."""
    started: list[subprocess.Popen] = []
    try:
        urls, roots = [], {}
        for i in range(engines):
            port = procs.free_port()
            cmd = ["taskset", "-c", str(i), sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                   "--model", model, "--served-model-name", Path(model).name, "--port", str(port), "--enforce-eager", "--max-model-len", "2048",
                   "--gpu-memory-utilization", "0.12"]
            # The same engine environment HFX gives its workers (one core, an OpenMP pool of that
            # size bound to it): with taskset alone vLLM's CPU backend sizes its threads from the
            # NUMA node and reserves a core, and each engine ran ~20x slower here.
            env = {"VLLM_LOGGING_LEVEL": "WARNING", **device_environment("cpu", cpu_cores=str(i))}
            proc = procs.spawn(cmd, logs / f"api_server-{i}.log", env=env)
            started.append(proc)
            urls.append(f"http://127.0.0.1:{port}")
            roots[f"api_server-{i}"] = proc.pid
        for i, url in enumerate(urls):
            _wait_http(f"{url}/health", 300, started[i], f"api_server-{i}")
        port = procs.free_port()
        router = procs.spawn([_vllm_router(), "--host", "127.0.0.1",
                              "--port", str(port), "--policy", "round_robin", "--worker-urls", *urls,
                              "--prometheus-host", "127.0.0.1", "--prometheus-port", str(procs.free_port())],
                             logs / "vllm-router.log")
        started.append(router)
        roots["router"] = router.pid
        _wait_http(f"http://127.0.0.1:{port}/v1/models", 120, router, "vllm-router")
        yield f"http://127.0.0.1:{port}", roots
    finally:
        for proc in reversed(started):
            procs.stop_group(proc.pid)


@contextmanager
def hfx(model: str, engines: int, home: Path, extra: list[str]):
    """`hfx up --workers N` with the OpenAI API on a free port; yields (url, roots)."""
    http_port, router_port = procs.free_port(), procs.free_port()
    cmd = procs.hfx_command("--home", str(home), "up", "--workers", str(engines), "--model", model, "--detach", "--timeout", "900",
                            "--router-port", str(router_port), "--http-port", str(http_port), *extra)
    try:
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=600)
        state = json.loads((home / "cluster.json").read_text())
        roots = dict(state["pgids"])
        for pidfile in Path(state["log_dir"]).glob("*.pid"):  # workers, started by the scaler
            roots[pidfile.stem] = procs.read_group_records(pidfile)[-1][0]  # the latest start
        yield f"http://127.0.0.1:{http_port}", roots
    finally:
        subprocess.run(procs.hfx_command("--home", str(home), "down"), cwd=ROOT, timeout=120,
                       stderr=subprocess.DEVNULL)


# -- measurements ----------------------------------------------------------------------------------

def serve_bench(url: str, model: str, args, rate: float, out: Path, headers: list[str]) -> dict:
    """One run of vLLM's serving benchmark; returns its result JSON."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"serve-{rate:g}.json"
    cmd = [sys.executable, "-m", "benchmarks.peer.vllm_serve", "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", Path(model).name, "--tokenizer", model,
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--ignore-eos", "--num-prompts", str(args.requests),
           "--request-rate", str(rate), "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,90,99", "--goodput", f"ttft:{args.ttft_ms:g}", f"tpot:{args.tpot_ms:g}",
           "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", name, "--disable-tqdm"]
    if headers:
        cmd += ["--header", *headers]
    with open(out / f"serve-{rate:g}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800, stdout=log, stderr=subprocess.STDOUT)
    return json.loads((out / name).read_text())


def multi_slo(url: str, model: str, args, label: str, out: Path, unloaded_from: Path | None) -> dict:
    """HFX's multi-class workload against `url`; SLOs from `unloaded_from`'s probe when given."""
    json_out = out / f"multi-slo-{label}.json"
    cmd = procs.hfx_command("bench", "--target", url, "--rate", *[f"{r:g}" for r in args.multi_slo],
                            "--requests", str(args.multi_slo_requests), "--seed", str(args.seed), "--label", label,
                            "--model", model, "--max-model-len", "2048", "--json", str(json_out), "--quiet",
                            "--per-request", str(out / f"multi-slo-{label}-requests.jsonl"))
    if unloaded_from is not None:
        cmd += ["--unloaded-from", str(unloaded_from)]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=3600)
    return json.loads(json_out.read_text())


SERVE_FIELDS = ("request_goodput", "completed", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms",
                "mean_ttft_ms", "p90_ttft_ms", "median_tpot_ms", "duration")


def measure(name: str, url: str, roots: dict, model: str, args, out: Path, results: dict) -> None:
    headers = [] if (name != "hfx" or args.no_slo_headers) else [
        f"x-slo-ttft-ms={args.ttft_ms:g}", f"x-slo-tpot-ms={args.tpot_ms:g}"]
    for rate in args.rate:
        recorder = flame.Recorder(roots, Path(args.flame), f"{name}-{rate:g}") if args.flame else None
        load_before = round(os.getloadavg()[0], 2)  # the machine's other work, which skews every figure
        snap = cputime.snapshot()
        before, wait_before = cputime.tree_cpu_s(roots, snap), cputime.tree_wait_s(roots, snap)
        started = time.time()  # the run's window, to pick its spans (benchmarks.peer.ttft_spans)
        try:
            run = serve_bench(url, model, args, rate, out / name, headers)
        finally:
            snap = cputime.snapshot()
            cpu = cputime.delta(before, cputime.tree_cpu_s(roots, snap))
            wait = cputime.delta(wait_before, cputime.tree_wait_s(roots, snap))
            if recorder is not None:
                recorder.stop()
                _print_top(name, rate, recorder.paths)
        tokens = run.get("total_output_tokens", 0) or 1
        results["serve"].append({"target": name, "rate_rps": rate, "loadavg_1m_before": load_before,
                                 "started_unix_s": started, "ended_unix_s": time.time(),
                                 **{k: run.get(k) for k in SERVE_FIELDS},
                                 "failed": args.requests - int(run.get("completed", 0)), "cpu_s": cpu, "wait_s": wait,
                                 # goodput = requests within both SLOs / duration, and the duration
                                 # ends with the last answer: the count is the comparable part.
                                 "slo_met": round((run.get("request_goodput") or 0) * (run.get("duration") or 0)),
                                 "output_tokens": tokens})
        print(f"  {name} @ {rate:g} req/s: goodput {run.get('request_goodput', 0):.2f} req/s, "
              f"TPOT mean {run.get('mean_tpot_ms', 0):.2f} ms", file=sys.stderr)
    if args.multi_slo:
        results["multi_slo"][name] = multi_slo(url, model, args, name, out, shared_probe(name, args, out))


def shared_probe(name: str, args, out: Path) -> Path | None:
    """Where `name`'s multi-class SLOs come from: --unloaded-from for every target; else the
    peer's own probe for HFX when the peer ran first; None = the target probes itself."""
    if args.unloaded_from:
        return Path(args.unloaded_from)
    if name == "hfx" and "peer" in args.targets and args.targets.index("peer") < args.targets.index("hfx"):
        return out / "multi-slo-peer.json"
    return None


def _print_top(name: str, rate: float, paths: dict[str, Path]) -> None:
    path = paths.get("router")
    if path is None or not path.exists():
        return
    print(f"\nwhere {name}'s router spends its time @ {rate:g} req/s (py-spy samples; {path}):", file=sys.stderr)
    for func, own, incl in flame.top(path):
        print(f"  {incl:7d} {own:7d}  {func[:150]}", file=sys.stderr)


def _print(results: dict) -> None:
    print(f"\nvLLM serving benchmark (random {results['input_len']}/{results['output_len']}, "
          f"{results['requests']} requests, goodput SLO ttft:{results['ttft_ms']:g} tpot:{results['tpot_ms']:g} ms)")
    print(f"{'target':<8}{'load':>6}{'rate':>6}{'goodput':>9}{'done':>6}{'met':>6}{'TTFT p50':>10}{'p99':>8}{'TPOT mean':>11}{'p99':>8}"
          f"{'router CPU s':>14}{'ms/token':>10}")
    for r in results["serve"]:
        router_s = r["cpu_s"].get("router", 0.0)
        print(f"{r['target']:<8}{r['loadavg_1m_before']:>6.1f}{r['rate_rps']:>6g}{r['request_goodput'] or 0:>9.2f}{r['completed']:>6}{r.get('slo_met', 0):>6}"
              f"{r['median_ttft_ms']:>10.1f}{r['p99_ttft_ms']:>8.1f}{r['mean_tpot_ms']:>11.2f}{r['p99_tpot_ms']:>8.2f}"
              f"{router_s:>14.2f}{1000 * router_s / r['output_tokens']:>10.3f}")
    print("\nCPU seconds per process over each run (X/children: its descendants, e.g. a vLLM engine core)")
    for r in results["serve"]:
        cells = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_s"].items()) if v >= 0.005)
        print(f"  {r['target']} @ {r['rate_rps']:g}: {cells}")
    print("\nRun-queue wait, seconds per process over each run (runnable, waiting for a core)")
    for r in results["serve"]:
        cells = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.get("wait_s", {}).items()) if v >= 0.005)
        print(f"  {r['target']} @ {r['rate_rps']:g}: {cells}")
    if results["multi_slo"]:
        print("\nHFX's multi-class workload, same absolute SLOs on both (SLO attainment)")
        for name, doc in results["multi_slo"].items():
            cells = "  ".join(f"{rec['rate_rps']:g} req/s {100 * rec['slo_attainment']:.1f}%" for rec in doc["records"])
            print(f"  {name:<6} {cells}")
            for rec in doc["records"]:   # which class misses, and how many were refused
                per = ", ".join(f"{c} {100 * v['slo_attainment']:.0f}% ({v['rejected']} refused)"
                                for c, v in rec["per_class"].items())
                print(f"    {rec['rate_rps']:g} req/s: {per}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.multi_slo and not args.unloaded_from and args.targets[:2] == ["hfx", "peer"]:
        print("error: HFX first needs --unloaded-from (the SLOs come from the peer's probe)", file=sys.stderr)
        return 2
    from services.common.model import ensure_default_model

    model = str(ensure_default_model())
    results = {"engines": args.engines, "requests": args.requests, "input_len": args.input_len,
               "output_len": args.output_len, "ttft_ms": args.ttft_ms, "tpot_ms": args.tpot_ms, "seed": args.seed,
               "started_unix_s": time.time(), "serve": [], "multi_slo": {}}
    with tempfile.TemporaryDirectory(prefix="hfx-peer-") as tmp:
        tmp_path = Path(tmp)
        for name in args.targets:
            print(f"[{name}] starting {args.engines} engine(s)", file=sys.stderr)
            target = (peer(model, args.engines, tmp_path / "peer-logs") if name == "peer"
                      else hfx(model, args.engines, tmp_path / "hfx-home", args.hfx_arg))
            try:
                with target as (url, roots):
                    measure(name, url, roots, model, args, tmp_path, results)
            finally:
                if args.keep_logs:
                    shutil.copytree(tmp_path, args.keep_logs, dirs_exist_ok=True)
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
