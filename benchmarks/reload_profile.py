"""Where vLLM's layer-wise reload spends its time in a standby's engine (issue 12, fifth pass).

A standby's D2D pull is `model_runner.reload_weights` fed with checked views of the donor's
memory. This starts one standby engine per variant (dummy weights, one core, the worker's
settings, with or without --cpu-huge-pages), reads the checkpoint into memory inside the engine
process first (so, as in a pull, the source bytes are already resident: no file reads, no CRC),
then times `--reloads` reloads from those tensors under cProfile and prints the top functions by
their own and cumulative time, with the page faults each reload took.

  python -m benchmarks.reload_profile --params 500M --variants on,off --reloads 2

Needs the machine to itself (the engine on --cores).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

from services.common.model import ensure_default_model, parse_params


def profiled_reload(worker: Any, model_dir: str, reloads: int, top: int) -> dict:
    """Runs in the engine process (collective_rpc): the checkpoint into memory, then `reloads`
    profiled reloads from it."""
    from services.worker.weights.engine_side import storage_weights

    tensors = [(name, t.clone()) for name, t in storage_weights(Path(model_dir))]
    runner = worker.model_runner
    runs = []
    for _ in range(reloads):
        prof = cProfile.Profile()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.monotonic()
        prof.enable()
        runner.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        prof.disable()
        elapsed = time.monotonic() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        runs.append({"seconds": elapsed, "minor_faults": faults, "profile": out.getvalue()})
    return {"runs": runs}


async def one_variant(model_dir: str, cores: str, huge_pages: bool, reloads: int, top: int) -> dict:
    from services.worker.engine.vllm_engine import VllmEngine, VllmEngineConfig

    engine = VllmEngine(VllmEngineConfig(model=model_dir, standby=True, standby_warm_reload=False, cpu_cores=cores,
                                         cpu_huge_pages=huge_pages))
    await engine.start()
    try:
        (report,) = await engine._llm.collective_rpc(profiled_reload, args=(model_dir, reloads, top))
    finally:
        engine._llm.shutdown()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=parse_params, help="the `hfx model init --params N` model (default: tiny)")
    p.add_argument("--variants", default="on,off", help="huge pages on/off, in this order (default %(default)s)")
    p.add_argument("--reloads", type=int, default=2, help="profiled reloads per engine (default %(default)s)")
    p.add_argument("--cores", default="0", help="the engine's cores (default %(default)s)")
    p.add_argument("--top", type=int, default=25, help="functions shown per ordering (default %(default)s)")
    p.add_argument("--out", type=Path, help="write reports as JSON here (default: print only)")
    args = p.parse_args(argv)
    model_dir = str(ensure_default_model(params=args.params))
    results = {}
    for variant in args.variants.split(","):
        # Each engine core is a fresh spawned process, so it reads the variant's environment anew;
        # what the last variant's start added to this process's environment is taken back first.
        saved = dict(os.environ)
        try:
            report = asyncio.run(one_variant(model_dir, args.cores, variant == "on", args.reloads, args.top))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        results[variant] = report
        for i, run in enumerate(report["runs"]):
            print(f"=== huge pages {variant}, reload {i + 1}: {run['seconds']:.3f} s, "
                  f"{run['minor_faults']:,} minor faults", flush=True)
            print(run["profile"], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
