"""Where HFX put a live run's requests, and how crowded each one's decode was, from its spans.

Reads a span store (`hfx up`'s `--tracing local` directory; `benchmarks.peer.compare --keep-logs DIR`
keeps it under DIR) and, from each request's `worker.generate` span (its instance, its first
token event, its end), prints per instance how many requests ran there, and the mean number of
requests running on a request's instance while it decoded (itself included, time-weighted over
its decode): decode steps grow with the batch, so an uneven split shows up in TPOT. For issue 9's
placement comparisons (BENCHMARKS.md, "The token path, sixteenth session").

  python -m benchmarks.peer.placement DIR [DIR ...] [--since UNIX_S] [--until UNIX_S] [--json]

(`compare --json` has each rate's `started_unix_s` and `ended_unix_s`: a window per rate.)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from services.common import tracing
from services.common.spanstore import SpanRecord, read_spans


@dataclass(frozen=True)
class Leg:
    instance: str
    start_s: float
    first_s: float
    end_s: float


def legs(spans: Iterable[SpanRecord], until_unix_s: float | None = None) -> list[Leg]:
    """One per worker.generate span that streamed a first token (others never decoded) and
    started before `until_unix_s`."""
    out = []
    for span in spans:
        if span.name != tracing.SPAN_WORKER or (until_unix_s is not None and span.start_unix_s > until_unix_s):
            continue
        first = span.event(tracing.EVENT_FIRST_TOKEN)
        if first is None:
            continue
        instance = str(span.attributes.get(tracing.ATTR_INSTANCE, span.service))
        out.append(Leg(instance, span.start_unix_s, first.time_unix_s, span.end_unix_s))
    return out


def _running(intervals: Sequence[tuple[float, float]], a: float, b: float) -> float:
    """Time-weighted mean count of `intervals` overlapping [a, b]."""
    if b <= a:
        return 0.0
    return sum(max(0.0, min(e, b) - max(s, a)) for s, e in intervals) / (b - a)


def summarise(all_legs: Sequence[Leg]) -> dict:
    by_instance: dict[str, list[Leg]] = collections.defaultdict(list)
    for leg in all_legs:
        by_instance[leg.instance].append(leg)
    crowd = []
    per_instance = {}
    for instance, here in sorted(by_instance.items()):
        spans = [(leg.start_s, leg.end_s) for leg in here]
        mine = [_running(spans, leg.first_s, leg.end_s) for leg in here if leg.end_s > leg.first_s]
        crowd.extend(mine)
        per_instance[instance] = {"requests": len(here),
                                  "mean_running_while_decoding": sum(mine) / len(mine) if mine else None}
    return {"requests": len(all_legs), "instances": per_instance,
            "mean_running_while_decoding": sum(crowd) / len(crowd) if crowd else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="span store directories (one per run)")
    p.add_argument("--since", type=float, default=None, metavar="UNIX_S", help="only spans that ended after this")
    p.add_argument("--until", type=float, default=None, metavar="UNIX_S", help="only spans that started before this")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    rows = {}
    for directory in args.dirs:
        if not Path(directory).is_dir():
            p.error(f"{directory}: not a directory")
        rows[directory] = summarise(legs(read_spans(directory, since_unix_s=args.since), args.until))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    for directory, row in rows.items():
        split = " / ".join(f"{iid} {v['requests']}" for iid, v in row["instances"].items())
        crowd = row["mean_running_while_decoding"]
        print(f"{directory}: {row['requests']} requests ({split}); running beside a decode, mean "
              f"{'-' if crowd is None else f'{crowd:.2f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
