"""`hfx profile`: start an engine in this process, profile it, fit the step-time model, print the
fit and its error, and write the profile JSON (for `--sim-profile`, `hfx sim --profile` and
`hfx bench --profile`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from services.scheduler.latency import error
from services.sim.profiles import profile_to_dict
from services.worker.config import WorkerConfig
from services.worker.engine import make_engine
from services.worker.profile import (FULL, QUICK, declared_profile, measured_profile, probes, profile_engine,
                                     vocab_size_of)

EXIT_FAILED = 1


async def _profile(args: argparse.Namespace, model: str) -> dict:
    config = WorkerConfig(model=model, instance_id="profile", engine=args.engine, device=args.device,
                          kv_cache_memory_bytes=args.kv_cache_mib * 1024 * 1024, max_num_seqs=args.max_num_seqs,
                          sim_profile=args.sim_profile, profile_at_start=False)
    engine = make_engine(args.engine, config)
    grid = FULL if args.grid == "full" else QUICK
    started = time.monotonic()
    print(f"starting engine {args.engine}{' (SIMULATED)' if args.engine == 'sim' else ''}, model {model}",
          file=sys.stderr)
    await engine.start()
    try:
        bar = tqdm(total=probes(grid), desc="profiling", unit="probe", file=sys.stderr, mininterval=0.5)
        profiling = time.monotonic()
        raw: list = []

        def progress(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update()

        result, samples = await profile_engine(engine, vocab_size_of(model), grid, progress=progress, raw=raw)
        bar.close()
        seconds = time.monotonic() - profiling
        prof = measured_profile(result, engine, f"{args.engine}-{Path(model).name}", args.max_num_seqs)
        sim = declared_profile(engine) if args.engine == "sim" else None
        if sim is not None:  # the simulated engine's own step budget and noise, not a guess
            prof = replace(prof, chunk_tokens=sim.chunk_tokens, max_num_seqs=sim.max_num_seqs,
                           note=f"measured on the SIMULATED engine (profile {sim.name})")
        prefill = [s for s in samples if s.prefill_tokens > 0]
        decode = [s for s in samples if s.prefill_tokens == 0]
        return profile_to_dict(
            prof, engine=args.engine, device=args.device, checkpoint=model, grid=args.grid,
            source="measured by `hfx profile`" + (" on the SIMULATED engine" if args.engine == "sim" else ""),
            fit={"r2": result.r2, "mape": result.mape, "samples": result.samples, "seconds": round(seconds, 2),
                 "prefill": dict(zip(("r2", "mape"), error(result.model, prefill))),
                 "decode": dict(zip(("r2", "mape"), error(result.model, decode))),
                 # Engine-timed fits are over per-grid-point medians; the error over every raw
                 # engine step behind them says how noisy single steps are.
                 **({"raw_steps": dict(zip(("r2", "mape", "samples"), (*error(result.model, raw), len(raw))))}
                    if raw else {})},
            measured_unix_s=time.time(), startup_s=round(profiling - started, 2),
        )
    finally:
        await engine.shutdown()


def run_profile_command(args: argparse.Namespace, model: str) -> int:
    try:
        doc = asyncio.run(_profile(args, model))
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: profiling failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _print(doc: dict) -> None:
    m, f = doc["model"], doc["fit"]
    print(f"engine {doc['engine']}{' (SIMULATED)' if doc['engine'] == 'sim' else ''}  checkpoint {doc['checkpoint']}")
    print(f"step_ms = {m['c0_ms']:.4g} + {m['c1_ms_per_prefill_token']:.4g}*prefill_tokens"
          f" + {m['c2_ms_per_decode_seq']:.4g}*decode_seqs + {m['c3_ms_per_kv_token']:.4g}*kv_tokens")
    print(f"fit over {f['samples']} steps in {f['seconds']:.1f}s: R^2 {f['r2']:.3f}, MAPE {f['mape']:.1%} "
          f"(prefill R^2 {f['prefill']['r2']:.3f} MAPE {f['prefill']['mape']:.1%}; "
          f"decode R^2 {f['decode']['r2']:.3f} MAPE {f['decode']['mape']:.1%})")
    if "raw_steps" in f:
        r = f["raw_steps"]
        print(f"(fit over per-grid-point medians of engine-timed steps; over all {r['samples']} raw steps:"
              f" R^2 {r['r2']:.3f}, MAPE {r['mape']:.1%})")
    print(f"KV {doc['kv_capacity_tokens']} tokens, {doc['chunk_tokens']}-token steps, {doc['max_num_seqs']} seqs")
