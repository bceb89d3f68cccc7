"""The shifting mix of issue 11's benchmark (benchmarks/roles.py `sim` and `live-mix`): a
prompt-heavy phase, a decode-heavy phase, prompt-heavy again (services/sim/phases.py over
services/sim/workloads/pd.yaml), and attainment per phase and per 10 s window."""

from __future__ import annotations

import argparse

from services import argtypes
from services.report.metrics import met_slo
from services.scheduler.policy.settings import policy_config
from services.sim import ENGINE_LABEL
from services.sim.phases import Phase, phased
from services.sim.profiles import load_profile
from services.sim.workload import as_live, load_workload

WORKLOAD = "services/sim/workloads/pd.yaml"
WINDOW_S = 10.0


def shifting_mix(args):
    """The three phases, their requests (clipped to --max-model-len as a live client sends them),
    the policy config and the profile: one workload for `sim` and `live-mix`."""
    workload, profile = load_workload(WORKLOAD), load_profile(args.profile)
    d = args.phase_s
    phases = [Phase("prompt-heavy", d, args.rate, {"longdoc": 0.6, "chat": 0.4}),
              Phase("decode-heavy", d, args.rate * args.decode_factor, {"longdoc": 0.05, "chat": 0.95}),
              Phase("prompt-heavy again", d, args.rate, {"longdoc": 0.6, "chat": 0.4})]
    named = phased(workload, phases, args.seed, profile.model, profile.chunk_tokens)
    reqs = [r for _, r in named]
    if args.max_model_len:
        reqs = as_live(reqs, args.max_model_len)
    phase_of = {r.spec.request_id: name for name, r in named}
    config = policy_config(profile, workload.classes, {"pd_local_prefill": args.local_prefill})
    print(f"{ENGINE_LABEL}; profile {profile.name}; {args.instances} instances starting at P:D {args.ratio}; "
          f"workload {WORKLOAD} in phases of {d:.0f} s: "
          + ", ".join(f"{p.name} {p.rate_rps:g} req/s ({p.weights})" for p in phases)
          + f"; {len(reqs)} requests; seed {args.seed}; policy hfx; D may prefill: {args.local_prefill}"
          + (f"; context {args.max_model_len} (prompts clipped)" if args.max_model_len else ""))
    return workload, phases, reqs, phase_of, config, profile


def print_attainment(mode: str, phases, records, phase_of: dict[str, str], note: str = "") -> None:
    cells = []
    for ph in phases:
        recs = [r for r in records if phase_of[r.spec.request_id] == ph.name]
        cells.append(f"{ph.name} {sum(map(met_slo, recs)) / max(len(recs), 1):.1%}")
    windows: dict[int, list[bool]] = {}
    for r in records:
        windows.setdefault(int(r.spec.arrival_s // WINDOW_S), []).append(met_slo(r))
    print(f"\n[{mode}] SLO attainment per phase: " + "; ".join(cells)
          + f"; overall {sum(map(met_slo, records)) / max(len(records), 1):.1%}{note}")
    print(f"  per {WINDOW_S:.0f} s window (by arrival): "
          + " ".join(f"{sum(v) / len(v):.0%}" for _, v in sorted(windows.items())))


def add_mix_arguments(s) -> None:
    """The shifting mix's flags, shared by `sim` and `live-mix`."""
    s.add_argument("--ratio", default="8:8", help="starting (and fixed) P:D (default %(default)s)")
    s.add_argument("--rate", type=argtypes.positive_float, default=20.0,
                   help="req/s in the prompt-heavy phases (default %(default)s)")
    s.add_argument("--decode-factor", type=argtypes.positive_float, default=2.0,
                   help="the decode-heavy phase's rate as a multiple of --rate (default %(default)s)")
    s.add_argument("--phase-s", type=argtypes.positive_float, default=40.0, help="default %(default)s")
    s.add_argument("--profile", default="cpu-tiny", help="engine profile, a name or a file (default %(default)s)")
    s.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                   help="clip prompts to this context as a live client must (0: none) (default %(default)s)")
    s.add_argument("--local-prefill", action=argparse.BooleanOptionalAction, default=True,
                   help="may decode instances prefill short or overflow prompts (pd_local_prefill) (default on)")
    s.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="default %(default)s")
