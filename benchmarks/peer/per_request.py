"""HFX's multi-class misses request by request, against the peer's run of the same requests.

Reads the `--per-request` files that `hfx bench` writes (benchmarks.peer.compare keeps them as
multi-slo-LABEL-requests.jsonl under --keep-logs): the same workload, seed and rate give the same
requests on both targets, in the same order. Per rate it counts HFX's misses by class and by why
(refused; TTFT; TPOT), each split by whether the peer met that request, and for refusals which fit
test held the request back at its last try (the reason's "last tried with its SLO: ..." part,
services/scheduler/policy/why.py).

  python -m benchmarks.peer.per_request HFX.jsonl PEER.jsonl      (either may be .jsonl.gz)
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

TEST = re.compile(r": (\(\d\)|closed: [a-z]+|not accepting|\d+ requests)")


def load(path: str) -> dict[tuple[float, int], dict]:
    """A per-request JSONL file (gzipped if its name ends in .gz)."""
    text = gzip.decompress(Path(path).read_bytes()).decode() if path.endswith(".gz") else Path(path).read_text()
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return {(r["rate_rps"], r["index"]): r for r in rows}


def why(row: dict) -> str:
    if row["verdict"] == "reject":
        return "refused"
    if row["ttft_ms"] is None:
        return "failed"
    late = [name for name, value, slo in (("TTFT", row["ttft_ms"], row["ttft_slo_ms"]),
                                          ("TPOT", row["tpot_ms"], row["tpot_slo_ms"])) if value is not None and value > slo]
    return "+".join(late) or "?"


def held_by(reason: str) -> str:
    """Which test failed on each instance at the refused request's last try, e.g. "(2)/(2)"."""
    _, _, tried = reason.partition("last tried with its SLO: ")
    if not tried:
        return "never tried with its SLO"
    tests = [m.group(1) if (m := TEST.search(part)) else "?" for part in tried.split('"')[0].split("; ")]
    return "/".join(tests)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hfx", help="HFX's per-request JSONL")
    p.add_argument("peer", help="the peer's per-request JSONL (same workload, seed and rates)")
    args = p.parse_args(argv)
    hfx, peer = load(args.hfx), load(args.peer)
    for rate in sorted({rate for rate, _ in hfx}):
        rows = [r for (r_rate, _), r in sorted(hfx.items()) if r_rate == rate]
        both = [(r, peer.get((rate, r["index"]))) for r in rows]
        met = sum(r["met"] for r in rows)
        peer_met = sum(bool(q and q["met"]) for _, q in both)
        print(f"{rate:g} req/s: hfx met {met} of {len(rows)}, peer {peer_met}")
        misses = collections.Counter((r["task_class"], why(r), "peer met" if q and q["met"] else "peer missed")
                                     for r, q in both if not r["met"])
        for (cls, what, other), n in sorted(misses.items()):
            print(f"  {cls:<10} {what:<10} {other:<12} {n:4d}")
        held = collections.Counter((r["task_class"], held_by(r["reason"])) for r in rows if r["verdict"] == "reject")
        for (cls, tests), n in sorted(held.items()):
            print(f"  refused {cls:<10} held by {tests:<28} {n:4d}")


if __name__ == "__main__":
    main()
